"""The worker's side of ``fabric.shm_transport``: the requests frontends left in their slabs,
and the large final replies written back into them.

A request that arrived in a slab is remembered (by route and id) until its final reply: that
reply goes into the slab when it is large and fits, else inline as usual.
"""

from __future__ import annotations

from fabric import errors
from fabric.errors import RequestError
from fabric.inproc import Route
from fabric.protocol import RequestHeader
from fabric.shm_transport import MIN_BYTES, Slab, SlabMaps, domain_if

from .raw_wire import RawParts, joined


class ShmPayloads:
    def __init__(self, enabled: bool) -> None:
        self.domain = domain_if(enabled)
        self._maps = SlabMaps(self.domain) if self.domain else None
        # Requests held that came in a slab; added by the I/O thread, taken by any.
        self._slabs: dict[tuple[Route, int], Slab] = {}

    def incoming(self, header: RequestHeader, frontend: Route, max_bytes: int) -> memoryview:
        """The request a frontend left in its slab, as a view (RequestError if not)."""
        if self._maps is None:
            raise RequestError(
                errors.UNAVAILABLE, "this worker does not take payloads through shared memory"
            )
        slab, view = self._maps.map(header.payload_shm, header.payload_size, max_bytes)
        self._slabs[(frontend, header.request_id)] = slab
        return view

    def outgoing(
        self, frontend: Route, request_id: int, body: bytes | RawParts | None, more: bool
    ) -> tuple[bytes | None, int]:
        """``(body, 0)`` to send as it is (joined), or ``(None, size)`` once it is in the
        slab (unjoined parts are written there one by one: no joined copy is made)."""
        if not self._slabs or more:  # a decoupled response: the region holds only the last
            return joined(body), 0
        slab = self._slabs.pop((frontend, request_id), None)
        if slab is None or body is None or len(body) < MIN_BYTES:
            return joined(body), 0
        parts = body.parts if isinstance(body, RawParts) else (body,)
        if not SlabMaps.write_reply(slab, request_id, parts, len(body)):
            return joined(body), 0
        return None, len(body)

    def close(self) -> None:
        self._slabs.clear()
        if self._maps is not None:
            self._maps.close()

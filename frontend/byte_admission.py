"""Admission by bytes: the request bytes held by the calls a frontend has admitted, bounded by
``--max-in-flight-bytes``.

``--max-in-flight`` counts calls, which says nothing about memory when one call is 16 MiB and the
next 1 KiB. A frontend holds each admitted call's serialized request until the call ends (it is
the payload sent, and sent again on a retry or hedge), so the sum of those sizes is what memory
scales with. A call that would take the sum past the limit is refused at once, before anything
is sent; a call larger than the limit on its own is refused even when nothing else is held, so
the limit is a bound, not a hint. Plain arithmetic, no I/O: ``InferenceService.infer`` calls
``admit`` before dispatch and ``release`` in its ``finally``.

gRPC receives a whole message before any handler runs, so a refused call has already cost its
bytes, and calls arriving together are all received at once. ``grpc_receive_options`` bounds
that part (``--max-concurrent-rpcs``): gRPC itself refuses calls past the limit before reading
their message, but only if a stream not yet accepted buffers little, so HTTP/2 BDP probing (which
grows every stream's window to megabytes) is turned off and a fixed per-stream window is used.
That costs throughput on large messages (``bench/results/membound-latest.md``), hence opt-in.
"""

from __future__ import annotations

GIB = 1024 * 1024 * 1024
DEFAULT_MAX_IN_FLIGHT_BYTES = GIB
"""Default of ``--max-in-flight-bytes``: 16 calls at the 64 MiB message limit, or 64 of 16 MiB.
A frontend holds about three times this at its peak (request, reply, and the reply's copy
handed to gRPC), so 1 GiB keeps a frontend within a few GiB on a small host while costing
nothing to calls of ordinary size (20,000 calls of 50 KiB fit)."""


STREAM_WINDOW_BYTES = 1024 * 1024
"""Per-stream HTTP/2 window with ``--max-concurrent-rpcs`` (gRPC's lookahead without BDP
probing): what a call refused before its message was read can have buffered. gRPC's default of
64 KiB measured 2-3x slower on 64 KiB calls; 1 MiB kept them at speed."""


def grpc_receive_options(max_concurrent_rpcs: int) -> tuple[int | None, list[tuple[str, int]]]:
    """``grpc.aio.server``'s ``maximum_concurrent_rpcs`` and the channel options that make it
    bound received bytes; (None, []) for 0, gRPC's defaults."""
    if max_concurrent_rpcs <= 0:
        return None, []
    options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", STREAM_WINDOW_BYTES)]
    return max_concurrent_rpcs, options


class ByteBudget:
    """The request bytes admitted calls hold; ``limit_bytes`` 0 means no bound."""

    __slots__ = ("held_bytes", "limit_bytes")

    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes < 0:
            raise ValueError(f"max in-flight bytes must be >= 0, got {limit_bytes}")
        self.limit_bytes = limit_bytes
        self.held_bytes = 0

    def admit(self, size: int) -> bool:
        """Counts ``size`` and says True when it fits under the limit; else counts nothing."""
        held = self.held_bytes + size
        if self.limit_bytes and held > self.limit_bytes:
            return False
        self.held_bytes = held
        return True

    def release(self, size: int) -> None:
        """Gives back what ``admit`` counted for a call that has ended."""
        self.held_bytes -= size

    def refusal(self, size: int) -> str:
        """The RESOURCE_EXHAUSTED text for a call ``admit`` refused: the limit and the sizes."""
        if size > self.limit_bytes:
            return (
                f"request of {size} bytes is larger than the frontend's --max-in-flight-bytes "
                f"({self.limit_bytes} bytes)"
            )
        return (
            f"frontend at byte capacity: request of {size} bytes with {self.held_bytes} bytes "
            f"in flight would exceed --max-in-flight-bytes ({self.limit_bytes} bytes)"
        )

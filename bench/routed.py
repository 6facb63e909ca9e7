"""``ours_routed`` of ``make bench``: our stack with a routing file (issue 12), to show what
routing costs. Its frontend runs ``--routing`` with the public name ``mlp`` split 90/10 between
``mlp`` and ``mlp_canary`` (the same network, copied under another name: a canary release of
an unchanged model), on a repository of its own holding just those two, so the other stacks
are not changed. Measured at the same points as ``ours`` in the same rounds.

``python -m bench.routed`` times the frontend's routing hook alone, in process: a call through
``Router.infer`` against a call straight to the same do-nothing ``infer``, per call."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path

from bench.results import SummaryRow
from fabric import errors
from frontend.fabric_client import Reply
from frontend.routing.config import parse_routing
from frontend.routing.router import Router
from frontend.wire import RequestRoute

ROUTED_SYSTEM = "ours_routed"
ROUTED_MODEL = "mlp"
CANARY_MODEL = "mlp_canary"
ROUTING = f"""\
routes:
  {ROUTED_MODEL}:
    targets:
      - {{model: {ROUTED_MODEL}, version: "1", weight: 90}}
      - {{model: {CANARY_MODEL}, version: "1", weight: 10}}
"""


def build_routed_repo(repo: Path, out: Path) -> Path:
    """``out`` holding ``mlp`` from ``repo`` and its copy ``mlp_canary``, and the routing
    file; returns the routing file's path."""
    shutil.copytree(repo / ROUTED_MODEL, out / ROUTED_MODEL)
    shutil.copytree(repo / ROUTED_MODEL, out / CANARY_MODEL)
    config = out / CANARY_MODEL / "config.pbtxt"
    text = config.read_text()
    config.write_text(text.replace(f'name: "{ROUTED_MODEL}"', f'name: "{CANARY_MODEL}"', 1))
    routing = out / "routing.yaml"
    routing.write_text(ROUTING)
    return routing


def routing_cost_lines(summary: list[SummaryRow], model: str) -> list[str]:
    """What routing costs: ``ours_routed`` against ``ours`` at each concurrency (each against
    the bare server of its own round, so the host's drift cancels)."""
    rows = {(r.system, r.concurrency): r for r in summary if r.model == model and r.rounds}
    out = []
    for (system, c), routed in sorted(rows.items()):
        plain = rows.get(("ours", c))
        if system != ROUTED_SYSTEM or plain is None:
            continue
        if routed.throughput_vs_bare and plain.throughput_vs_bare:
            tput = routed.throughput_vs_bare / plain.throughput_vs_bare
            p50 = (routed.p50_minus_bare_ms or 0.0) - (plain.p50_minus_bare_ms or 0.0)
            out.append(
                f"- routing (two targets, 90/10) at c={c}: {tput:.3f}x the req/s without a "
                f"routing file, p50 {p50:+.2f} ms"
            )
    return [*out, ""] if out else []


class _NoFabric:
    """The router's shadow client; the timed route has no shadow, so it is never called."""

    def submit(
        self, model: str, version: str, deadline_ns: int, payload: bytes
    ) -> tuple[int, asyncio.Future[Reply], object]:
        raise AssertionError("no shadow in the timed route")

    def cancel(self, request_id: int) -> None:
        raise AssertionError("no shadow in the timed route")


async def hook_cost_us(calls: int = 200_000, repeats: int = 5) -> tuple[float, float]:
    """(µs per direct call, µs per routed call), the best of ``repeats``."""
    ok = Reply(errors.OK, "", b"")

    async def infer(route: RequestRoute, payload: bytes, remaining_s: float | None) -> Reply:
        return ok

    router = Router(parse_routing(ROUTING.encode()), _NoFabric(), lambda: 0.0, 60.0)
    request = RequestRoute(ROUTED_MODEL, "", "")
    direct, routed = float("inf"), float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            await infer(request, b"", 1.0)
        t1 = time.perf_counter()
        for _ in range(calls):
            await router.infer(infer, request, b"", 1.0, None)
        t2 = time.perf_counter()
        direct, routed = min(direct, (t1 - t0) / calls), min(routed, (t2 - t1) / calls)
    return direct * 1e6, routed * 1e6


if __name__ == "__main__":
    d, r = asyncio.run(hook_cost_us())
    print(f"routing hook: {r - d:.2f} µs per call ({d:.2f} µs direct, {r:.2f} µs routed)")
    sys.exit(0)

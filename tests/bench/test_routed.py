"""``ours_routed``: its repository and routing file, its cost line, the in-process hook timing."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.results import SummaryRow
from bench.routed import (
    CANARY_MODEL,
    ROUTED_MODEL,
    ROUTED_SYSTEM,
    build_routed_repo,
    hook_cost_us,
    routing_cost_lines,
)
from frontend.routing.config import parse_routing


def test_routed_repo_holds_the_model_its_canary_and_a_valid_routing_file(tmp_path: Path) -> None:
    src = tmp_path / "repo" / ROUTED_MODEL
    (src / "1").mkdir(parents=True)
    (src / "config.pbtxt").write_text(f'name: "{ROUTED_MODEL}"\nmax_batch_size: 64\n')
    (src / "1" / "model.pt").write_bytes(b"weights")
    routing = build_routed_repo(tmp_path / "repo", tmp_path / "routed")
    canary = tmp_path / "routed" / CANARY_MODEL
    assert (canary / "config.pbtxt").read_text().startswith(f'name: "{CANARY_MODEL}"')
    assert (canary / "1" / "model.pt").read_bytes() == b"weights"
    route = parse_routing(routing.read_bytes()).routes[ROUTED_MODEL]
    assert [(t.model, t.weight) for t in route.targets] == [(ROUTED_MODEL, 90), (CANARY_MODEL, 10)]


def _row(system: str, c: int, tput: float, p50: float) -> SummaryRow:
    return SummaryRow(
        system=system,
        model=ROUTED_MODEL,
        concurrency=c,
        rounds=2,
        failed=[],
        throughput_vs_bare=tput,
        p50_minus_bare_ms=p50,
    )


def test_cost_line_sets_routed_against_plain_at_each_concurrency() -> None:
    rows = [_row("ours", 64, 0.80, 2.0), _row(ROUTED_SYSTEM, 64, 0.78, 2.5), _row("ours", 1, 1, 0)]
    assert routing_cost_lines(rows, ROUTED_MODEL) == [
        "- routing (two targets, 90/10) at c=64: 0.975x the req/s without a routing file, "
        "p50 +0.50 ms",
        "",
    ]
    assert routing_cost_lines(rows, "other") == []


def test_hook_cost_is_measured() -> None:
    direct, routed = asyncio.run(hook_cost_us(calls=2000, repeats=1))
    assert 0 < direct < routed

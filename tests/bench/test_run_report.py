"""``run-latest.md`` of ``make bench``: the PyTriton and large-payload sections sit after the
models' tables and before the table notes, each only where the run measured it."""

from __future__ import annotations

from bench.large import MIB
from bench.results import CpuPerCall, Goal, Report
from bench.run import goal_sections, render


def report(large: bool) -> Report:
    return Report(
        meta={
            "models": ["mlp"],
            "large": large,
            "timestamp": "T",
            "git": "abc",
            "cpus": 2,
            "rounds": 1,
            "duration_s": 4.0,
            "warmup_s": 1.0,
            "client_processes": 2,
        },
        cpu_per_call=[
            CpuPerCall(
                system="ours",
                model="mlp",
                concurrency=64,
                rounds=1,
                total_ms=1.0,
                per_process_ms={"frontend": 0.6, "broker": 0.2, "worker": 0.2},
                vs_peer=0.8,
            ),
            CpuPerCall(
                system="pytriton",
                model="mlp",
                concurrency=64,
                rounds=1,
                total_ms=1.25,
                per_process_ms={"python": 0.5, "tritonserver": 0.75},
            ),
        ],
        large=[
            {
                "system": s,
                "payload_bytes": MIB,
                "concurrency": 8,
                "shm": False,
                "throughput": t,
                "p50_ms": 80.0,
                "errors": 0,
            }
            for s, t in (("bare", 100.0), ("ours", 92.0))
        ],
        goals=[
            Goal(
                name="cpu_vs_pytriton",
                text="ours total CPU per call at c=64 <= PyTriton's",
                verdict="PASS",
                value=0.8,
                target=1.0,
                at_most=True,
                detail="median of 1",
            ),
            Goal(
                name="large_1MiB",
                text="large payloads: 1 MiB at c=8 >= 0.9x",
                verdict="PASS",
                value=0.92,
                target=0.9,
                detail="one round",
            ),
        ],
    )


def test_both_sections_with_their_goal_lines() -> None:
    lines = goal_sections(report(large=True))
    assert lines[0] == "### CPU per call: ours against PyTriton (`mlp`, same run)"
    assert "| 64 | 1.000 (frontend 0.600 + broker 0.200 + worker 0.200) | 1.250 (python 0.500 " \
        "+ tritonserver 0.750) | 0.80x | 1 |" in lines  # fmt: skip
    assert (
        "- **PASS** ours total CPU per call at c=64 <= PyTriton's: 0.80x (target <= 1x; "
        "median of 1)"
    ) in lines
    assert "| 1 MiB | 8 | 100.0 | 92.0 | 0.92x | >= 0.9x | 80.00 | 80.00 | 0/0 |" in lines
    assert (
        "- **PASS** large payloads: 1 MiB at c=8 >= 0.9x: 0.92x (target >= 0.9x; one round)"
    ) in lines
    # Each goal goes to its own section only.
    peer_end = lines.index("### Large payloads: `identity_fp32` against the bare echo server "
                           "(one round)")  # fmt: skip
    assert not any("large payloads" in ln for ln in lines[:peer_end])


def test_no_large_section_with_no_large() -> None:
    lines = goal_sections(report(large=False))
    assert not any(ln.startswith("### Large payloads") for ln in lines)
    assert lines[0].startswith("### CPU per call")


def test_sections_come_before_the_table_notes() -> None:
    md = render(report(large=True))
    cpu, big = md.index("### CPU per call"), md.index("### Large payloads")
    notes = md.index("CPU s per 1k req = CPU ms per request")
    assert md.index("### `mlp`") < cpu < big < notes

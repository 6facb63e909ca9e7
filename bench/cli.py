"""What ``bench.run`` and ``bench.peers`` share at their edges: the common flags, the run's
metadata (git, machine, settings) and writing the outputs (JSON, PNG, Markdown, ``latest.md``)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.results import Report, to_json


def parse_ints(text: str) -> list[int]:
    """``"1,8,64"`` -> [1, 8, 64]."""
    return [int(c) for c in text.split(",") if c.strip()]


def git_sha() -> str:
    """The short commit the run measured ("?" outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except Exception:
        return "?"
    return out or "?"


def git_dirty() -> list[str]:
    """Tracked files with uncommitted changes (the run measured the working tree)."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except Exception:
        return []
    return [line[3:] for line in out.splitlines() if line.strip()]


def new_meta(args: argparse.Namespace, stamp: str, log_dir: Path) -> dict[str, Any]:
    """The report's ``meta``: when, what code, which machine, with which settings."""
    return {
        "timestamp": stamp,
        "git": git_sha(),
        "git_dirty": git_dirty(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "client_processes": args.processes,
        "logs": str(log_dir),
    }


def add_common_args(parser: argparse.ArgumentParser, duration: float, warmup: float) -> None:
    """The flags ``bench.run`` and ``bench.peers`` share (defaults shown in their help)."""
    parser.add_argument(
        "--duration", type=float, default=None, help=f"measured seconds per point ({duration:g})"
    )
    parser.add_argument(
        "--warmup", type=float, default=None, help=f"unmeasured seconds first ({warmup:g})"
    )
    parser.add_argument("--concurrency", default=None, help="comma-separated list")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument(
        "--idle-seconds", type=float, default=2.0, help="sample idle CPU this long (0 = off)"
    )
    parser.add_argument("--broker-args", default="", help="extra broker arguments")
    parser.add_argument("--worker-args", default="", help="extra worker arguments")
    parser.add_argument("--frontend-args", default="", help="extra frontend arguments")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")


def write_outputs(
    report: Report, args: argparse.Namespace, kind: str, render: Callable[[Report], str]
) -> int:
    """``<kind>-<stamp>.json``, ``<kind>-latest.png`` and ``.md``, then ``latest.md``; the exit
    status (1 where a point or the model repository failed)."""
    from bench import report as report_mod

    stamp = report.meta["timestamp"]
    json_path = args.out / f"{kind}-{stamp}.json"
    json_path.write_bytes(to_json(report))
    if not args.no_plot:
        png = args.out / f"{kind}-latest.png"
        err = report_mod.plot(json_path, png)
        if err:
            report.notes.append(("plot", "-", err))
        else:
            report.meta["plot"] = png.name
        json_path.write_bytes(to_json(report))
    md = render(report)
    (args.out / f"{kind}-latest.md").write_text(md)
    report_mod.write_latest(args.out)
    print(md)
    print(f"bench: wrote {json_path} and {args.out / 'latest.md'}", file=sys.stderr)
    failed = any(r.failed or not r.rounds for r in report.summary)
    return 1 if failed or report.repo_error else 0

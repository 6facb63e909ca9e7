"""Peak memory of every tier under 16 MiB payloads, per byte-bound setting (issue 14).

Each case starts a fresh stack (broker, one CPU worker, one frontend, ``identity_fp32``) with
its own flags and environment, drives it with ``bench.large_client`` at 16 MiB for two windows
back to back, and reads each tier's peak resident memory (``VmHWM``) after each window and its
resident memory (``VmRSS``) at the end. A second window's peak well above the first's would be
memory creeping (heap fragmentation), not load. Errors are counted and sampled, so refusals by
``--max-in-flight-bytes`` or ``--max-queued-bytes`` show as RESOURCE_EXHAUSTED.

Writes ``<out>/membound-<UTC timestamp>.json`` and ``<out>/membound-latest.md``.

    python -m bench.membound [--duration 10] [--only NAME ...] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.large import MODEL, ONE_THREAD
from bench.lifecycle import Proc, free_port, stop_all
from bench.procs import proc_mem_mb
from bench.ready import wait_ready

MIB = 1024 * 1024
PAYLOAD_BYTES = 16 * MIB
CLIENT_TIMEOUT_S = 240.0
NO_BOUND = {"frontend": ["--max-in-flight-bytes", "0"], "broker": ["--max-queued-bytes", "0"]}
BOUND_256 = {"frontend": ["--max-in-flight-bytes", str(256 * MIB)]}
BOUND_256_16 = {"frontend": [*BOUND_256["frontend"], "--max-concurrent-rpcs", "16"]}
MMAP_1MIB = {"MALLOC_MMAP_THRESHOLD_": str(MIB)}


@dataclass(frozen=True)
class Case:
    name: str
    concurrency: int
    args: dict[str, list[str]] = field(default_factory=dict)  # per tier
    env: dict[str, str] = field(default_factory=dict)  # every tier


CASES = [
    Case("no byte bound", 32, NO_BOUND),
    Case("defaults (1 GiB)", 32),
    Case("256 MiB in flight", 32, BOUND_256),
    Case("256 MiB, 16 RPCs", 32, BOUND_256_16),
    Case("refuse every call", 32, {"frontend": ["--max-in-flight-bytes", "1"]}),
    Case("no byte bound", 64, NO_BOUND),
    Case("256 MiB in flight", 64, BOUND_256),
    Case("256 MiB, 16 RPCs", 64, BOUND_256_16),
]
PROBES = [  # not in the default run (--only NAME): what a refusal and glibc's heap cost
    Case("defaults, mmap threshold 1 MiB", 32, env=MMAP_1MIB),
    Case("256 MiB, mmap threshold 1 MiB", 32, BOUND_256, MMAP_1MIB),
]


def start_stack(case: Case, log_dir: Path, repo: Path) -> tuple[str, list[Proc]]:
    p_front, p_work, p_grpc = free_port(), free_port(), free_port()
    fb, wb = f"tcp://127.0.0.1:{p_front}", f"tcp://127.0.0.1:{p_work}"
    py = sys.executable
    procs: list[Proc] = []
    try:
        broker = [py, "-m", "broker", "--frontend-bind", fb, "--worker-bind", wb]
        procs.append(Proc("broker", broker + case.args.get("broker", []), log_dir, case.env))
        worker = [py, "-m", "worker", "--broker", wb, "--model-repository", str(repo)]
        worker += ["--device", "cpu", "--torch-threads", "1", *case.args.get("worker", [])]
        procs.append(Proc("worker", worker, log_dir, {**ONE_THREAD, **case.env}))
        frontend = [py, "-m", "frontend", "--host", "127.0.0.1", "--port", str(p_grpc)]
        frontend += ["--broker", fb, *case.args.get("frontend", [])]
        procs.append(Proc("frontend", frontend, log_dir, case.env))
        url = f"127.0.0.1:{p_grpc}"
        wait_ready(url, procs, [MODEL])
    except BaseException:
        stop_all(procs)
        raise
    return url, procs


def drive(url: str, conc: int, duration_s: float, warmup_s: float) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.large_client", "--url", url]
    argv += ["--payload-bytes", str(PAYLOAD_BYTES), "--concurrency", str(conc)]
    argv += ["--duration", str(duration_s), "--warmup", str(warmup_s)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    result: dict[str, Any] = json.loads(lines[-1]) if lines else {"error": out.stderr[-2000:]}
    return result


def run_case(case: Case, args: argparse.Namespace, repo: Path, log_dir: Path) -> dict[str, Any]:
    slug = f"{case.name.replace(' ', '_').replace(',', '')}-c{case.concurrency}"
    url, procs = start_stack(case, log_dir / slug, repo)
    try:
        base = {p.name: proc_mem_mb(p.pid).get("VmRSS") for p in procs}
        windows = []
        for _ in range(2):
            client = drive(url, case.concurrency, args.duration, args.warmup)
            peaks = {p.name: proc_mem_mb(p.pid).get("VmHWM") for p in procs}
            windows.append({"client": client, "peak_rss_mb": peaks})
        end = {p.name: proc_mem_mb(p.pid).get("VmRSS") for p in procs}
    finally:
        stop_all(procs)
    result = {"case": case.name, "concurrency": case.concurrency, "args": case.args}
    result |= {"env": case.env, "idle_rss_mb": base, "end_rss_mb": end, "windows": windows}
    w = windows[-1]
    print(
        f"membound: {case.name:32s} c={case.concurrency:<3d} peak "
        + " ".join(f"{n} {v:.0f}" for n, v in w["peak_rss_mb"].items() if v is not None)
        + f" MiB; {w['client'].get('throughput', 0):.1f} req/s, "
        f"errors {w['client'].get('errors')}",
        file=sys.stderr,
    )
    return result


def to_markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Peak memory per tier under 16 MiB payloads (`python -m bench.membound`)",
        "",
        f"{meta['stamp']}, fresh stack per row, two {meta['duration_s']:.0f} s windows each "
        f"(peak after window 1 / after window 2), model `{MODEL}`, CPU worker; "
        f"{meta['cpus']} CPUs, load average {meta['load']:.1f} at the end.",
        "",
        "| case | c | frontend MiB | broker MiB | worker MiB | req/s | errors (w2) "
        "| error sample |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]

    def peaks(r: dict[str, Any], tier: str) -> str:
        a, b = (w["peak_rss_mb"].get(tier) for w in r["windows"])
        return f"{a or 0:.0f} / {b or 0:.0f}"

    for r in results:
        client = r["windows"][-1]["client"]
        sample = (client.get("error_samples") or [""])[0][:90]
        lines.append(
            f"| {r['case']} | {r['concurrency']} | {peaks(r, 'frontend')} | "
            f"{peaks(r, 'broker')} | {peaks(r, 'worker')} | {client.get('throughput', 0):.1f} | "
            f"{client.get('errors')} | {sample} |"
        )
    lines += ["", "Resident memory at idle before load / at the end (MiB):", ""]
    for r in results:
        idle, end = r["idle_rss_mb"], r["end_rss_mb"]
        tiers = ", ".join(f"{t} {idle.get(t) or 0:.0f} / {end.get(t) or 0:.0f}" for t in idle)
        lines.append(f"- {r['case']}, c={r['concurrency']}: {tiers}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=12.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--only", nargs="*", default=None, help="case names to run")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    cases = CASES if args.only is None else [c for c in CASES + PROBES if c.name in args.only]
    with tempfile.TemporaryDirectory(prefix="membound-") as tmp:
        repo = Path(tmp) / "models"
        build = [sys.executable, "-m", "worker.demo_models", str(repo)]
        subprocess.run(build, check=True, stdout=subprocess.DEVNULL)
        results = [run_case(c, args, repo, Path(tmp) / "logs") for c in cases]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    meta = {
        "stamp": stamp,
        "duration_s": args.duration,
        "cpus": os.cpu_count(),
        "load": os.getloadavg()[0],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"membound-{stamp}.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=1)
    )
    (args.out / "membound-latest.md").write_text(to_markdown(results, meta))
    print(to_markdown(results, meta))


if __name__ == "__main__":
    main()

"""``make bench-large``: large tensors through our stack against the bare echo server, same
client, same run; shared memory against inline; CPU per 1,000 calls and peak RSS of every tier.

Each round starts the bare grpc.aio echo server (``bench.echo_server``) and our stack (broker,
one worker, one frontend, ``identity_fp32`` from the demo repository), then measures, back to
back in alternating order, each (payload, concurrency) point on both with the same client
(``bench.large_client``). At 16 MiB it also measures our stack with the tensors in system shared
memory (the client on the same host, as Triton's shm clients are) and, last, 16 MiB at c=32 for
peak memory. Ratios compare measurements seconds apart; the worse round is what counts.

Writes ``<out>/large-<UTC timestamp>.json`` and ``<out>/large-latest.md``.

    python -m bench.large [--rounds 2] [--duration 6] [--warmup 2] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.lifecycle import Proc, free_port, stop_all
from bench.procs import proc_mem_mb, tree_cpu_s
from bench.ready import wait_ready

KIB, MIB = 1024, 1024 * 1024
POINTS: list[tuple[int, int]] = [(64 * KIB, 16), (1 * MIB, 8), (16 * MIB, 4)]
SHM_POINT = (16 * MIB, 4)
RSS_POINT = (16 * MIB, 32)
MODEL = "identity_fp32"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
CLIENT_TIMEOUT_S = 180.0


def start_bare(log_dir: Path) -> tuple[str, list[Proc]]:
    port = free_port()
    argv = [sys.executable, "-m", "bench.echo_server", "--port", str(port)]
    procs = [Proc("bare", argv, log_dir)]
    url = f"127.0.0.1:{port}"
    wait_ready(url, procs, [MODEL])
    return url, procs


def start_ours(log_dir: Path, repo: Path, transport: str = "auto") -> tuple[str, list[Proc]]:
    """Our stack; ``transport`` "off" keeps every payload on ZeroMQ (``--shm-transport``)."""
    p_front, p_work, p_grpc = free_port(), free_port(), free_port()
    fb, wb = f"tcp://127.0.0.1:{p_front}", f"tcp://127.0.0.1:{p_work}"
    py = sys.executable
    procs: list[Proc] = []
    try:
        procs.append(
            Proc(
                "broker", [py, "-m", "broker", "--frontend-bind", fb, "--worker-bind", wb], log_dir
            )
        )
        worker = [py, "-m", "worker", "--broker", wb, "--model-repository", str(repo)]
        worker += ["--device", "cpu", "--torch-threads", "1", "--shm-transport", transport]
        procs.append(Proc("worker", worker, log_dir, env=ONE_THREAD))
        frontend = [py, "-m", "frontend", "--host", "127.0.0.1", "--port", str(p_grpc)]
        frontend += ["--shm-transport", transport]
        procs.append(Proc("frontend", [*frontend, "--broker", fb], log_dir))
        url = f"127.0.0.1:{p_grpc}"
        wait_ready(url, procs, [MODEL])
    except BaseException:
        stop_all(procs)
        raise
    return url, procs


def measure(
    system: str, url: str, procs: list[Proc], payload: int, conc: int, args: argparse.Namespace,
    shm: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """One point: the client's numbers, CPU seconds per 1,000 calls of each of the system's
    processes (and the client's) inside the window, and each process's peak RSS so far."""
    argv = [sys.executable, "-m", "bench.large_client", "--url", url]
    argv += ["--payload-bytes", str(payload), "--concurrency", str(conc)]
    # A 16 MiB call takes hundreds of ms on a busy 2-core host: longer windows, so that the
    # calls inside one outnumber those cut by its edges.
    scale = 3 if payload >= SHM_POINT[0] else 1
    argv += ["--duration", str(args.duration * scale), "--warmup", str(args.warmup * scale)]
    argv += ["--shm"] if shm else []
    client = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    pids = {p.name: p.pid for p in procs} | {"client": client.pid}
    before: dict[str, float] = {}
    after: dict[str, float] = {}
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    result: dict[str, Any] = {}
    assert client.stdout is not None
    for line in client.stdout:
        if line.startswith("window-start"):
            before = {n: tree_cpu_s(pid) for n, pid in pids.items()}
        elif line.startswith("window-end"):
            after = {n: tree_cpu_s(pid) for n, pid in pids.items()}
        elif line.startswith("{"):
            result = json.loads(line)
        if time.monotonic() > deadline:
            client.kill()
            break
    client.wait(timeout=30)
    n = result.get("requests", 0)
    result["system"] = system
    result["cpu_ms_per_call"] = {
        name: (after[name] - before[name]) * 1000 / n if n and before and after else None
        for name in pids
    }
    result["peak_rss_mb"] = {p.name: proc_mem_mb(p.pid).get("VmHWM") for p in procs}
    label = "shm" if shm else "inline"
    print(
        f"bench-large: {system:5s} {label:6s} {payload // KIB:6d} KiB c={conc:<3d} "
        f"{result.get('throughput', 0):8.1f} req/s p50 {result.get('p50_ms') or 0:8.2f} ms "
        f"errors {result.get('errors')}",
        file=sys.stderr,
    )
    return result


def run_round(
    args: argparse.Namespace, rnd: int, repo: Path, log_dir: Path, extras: bool = True
) -> list[dict[str, Any]]:
    """Bare and ours up at once, every point of ``POINTS`` on both, back to back in alternating
    order; with ``extras`` also shared memory at ``SHM_POINT`` and, last, ``RSS_POINT``."""
    results: list[dict[str, Any]] = []
    bare_url, bare = start_bare(log_dir / f"r{rnd}-bare")
    try:
        ours_url, ours = start_ours(log_dir / f"r{rnd}-ours", repo)
        tcp_url, tcp = "", list[Proc]()  # with extras: our stack without slabs too
        if extras:
            tcp_url, tcp = start_ours(log_dir / f"r{rnd}-tcp", repo, transport="off")
        try:
            for i, (payload, conc) in enumerate(POINTS):
                order = [("bare", bare_url, bare), ("ours", ours_url, ours)]
                if tcp:
                    order.append(("tcp", tcp_url, tcp))
                if (i + rnd) % 2:
                    order.reverse()
                for system, url, procs in order:
                    results.append(measure(system, url, procs, payload, conc, args))
                if extras and (payload, conc) == SHM_POINT:
                    results.append(measure("ours", ours_url, ours, payload, conc, args, True))
            for system, url, procs in (("bare", bare_url, bare), ("ours", ours_url, ours)):
                if not extras:
                    break
                point = measure(system, url, procs, *RSS_POINT, args)
                point["rss_point"] = True
                results.append(point)
        finally:
            stop_all(ours)
            stop_all(tcp)
    finally:
        stop_all(bare)
    for r in results:
        r["round"] = rnd
    return results


def to_markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Large tensors: our stack vs the bare grpc.aio echo server",
        "",
        f"{meta['utc']}, {meta['rounds']} round(s), {meta['duration_s']} s windows (x3 at "
        f"16 MiB), model `{MODEL}` (FP32 identity), same client (`bench.large_client`); "
        f"{meta['cpus']} CPUs, load average {meta['loadavg_1m_end']:.1f} at the end.",
        "",
        "`ours` sends payloads of 256 KiB or more through shared memory slabs between the "
        "frontend and the worker (`fabric.shm_transport`, the default on one host); `tcp` is "
        "the same stack with `--shm-transport off` (every byte through ZeroMQ); `shm` is the "
        "client's own system shared memory (Triton's extension).",
        "",
        "| round | payload | c | bare req/s | ours req/s | ratio | tcp req/s | ours ÷ tcp "
        "| bare p50 ms | ours p50 ms | shm req/s | shm vs inline |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def find(rnd: int, system: str, payload: int, conc: int, shm: bool = False) -> dict | None:
        for r in results:
            if (r["round"], r["system"], r["payload_bytes"], r["concurrency"], r["shm"]) == (
                rnd, system, payload, conc, shm,
            ) and not r.get("rss_point"):  # fmt: skip
                return r
        return None

    def f(v: float | None, digits: int = 1) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    for rnd in range(meta["rounds"]):
        for payload, conc in POINTS:
            b, o = find(rnd, "bare", payload, conc), find(rnd, "ours", payload, conc)
            s = find(rnd, "ours", payload, conc, True)
            t = find(rnd, "tcp", payload, conc)
            if b is None or o is None:
                continue
            ratio = o["throughput"] / b["throughput"] if b["throughput"] else None
            tcp_ratio = o["throughput"] / t["throughput"] if t and t["throughput"] else None
            shm_ratio = s["throughput"] / o["throughput"] if s and o["throughput"] else None
            lines.append(
                f"| {rnd + 1} | {payload // KIB} KiB | {conc} | {f(b['throughput'])} | "
                f"{f(o['throughput'])} | {f(ratio, 2)} | {f(t['throughput']) if t else '-'} | "
                f"{f(tcp_ratio, 2)} | {f(b['p50_ms'], 2)} | "
                f"{f(o['p50_ms'], 2)} | {f(s['throughput']) if s else '-'} | {f(shm_ratio, 2)} |"
            )
    lines += [
        "",
        "CPU ms per call inside the window (per process; `client` is the load generator):",
        "",
    ]
    lines += ["| round | system | mode | payload | c | " + " | ".join(_procs(results)) + " |"]
    lines += ["|---:|---|---|---:|---:|" + "---:|" * len(_procs(results))]
    for r in results:
        cpu = r["cpu_ms_per_call"]
        mode = "shm" if r["shm"] else "inline"
        cells = " | ".join(f(cpu.get(p), 2) for p in _procs(results))
        lines.append(
            f"| {r['round'] + 1} | {r['system']} | {mode} | {r['payload_bytes'] // KIB} KiB | "
            f"{r['concurrency']} | {cells} |"
        )
    lines += ["", f"Peak RSS (VmHWM, MiB) after 16 MiB at c={RSS_POINT[1]}:", ""]
    for r in results:
        if r.get("rss_point"):
            peaks = ", ".join(f"{k} {f(v, 0)}" for k, v in r["peak_rss_mb"].items())
            lines.append(
                f"- round {r['round'] + 1}, {r['system']}: {peaks} "
                f"({f(r['throughput'])} req/s, {r['errors']} errors)"
            )
    return "\n".join(lines) + "\n"


def _procs(results: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in results:
        names += [n for n in r["cpu_ms_per_call"] if n not in names]
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    log_dir = args.out / "logs" / f"large-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-large-") as tmp:
        repo = Path(tmp) / "models"
        subprocess.run([sys.executable, "-m", "worker.demo_models", str(repo)], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        for rnd in range(args.rounds):
            results += run_round(args, rnd, repo, log_dir)
    meta = {
        "utc": stamp,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "loadavg_1m_end": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }
    (args.out / f"large-{stamp}.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=1)
    )
    (args.out / "large-latest.md").write_text(to_markdown(results, meta))
    print(to_markdown(results, meta))


if __name__ == "__main__":
    main()

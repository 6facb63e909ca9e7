"""Benchmark driver (``make bench``): our stack against baselines measured in the same run.

Every round measures, back to back on the same machine:

1. the bare grpc.aio server (``bench.bare_server``), the ceiling of Python gRPC;
2. our stack: broker, one worker and one frontend as separate processes, started the way users
   start them, with the demo model repository (``python -m worker.demo_models DIR``);

each at every requested concurrency with the closed-loop load generator (``bench.loadgen``).
Then, once, the model called in-process (``bench.inprocess``).

The machine is small and shared, so absolute numbers are noise-prone: every figure for our stack is
reported as a ratio against the bare server measured in the same round. Over the measured window
it also records CPU seconds per 1,000 requests of each process (utime + stime from /proc, the
process and its descendants), the CPU that processes not started by this run used (a noise gauge),
and, where the stack reports statistics, the mean executed batch size.

Writes ``<out>/<UTC timestamp>.json`` and ``<out>/latest.md`` (also printed); process logs go to
``<out>/logs/<UTC timestamp>/``.

    python -m bench.run [--duration 10] [--warmup 2] [--concurrency 1,64] [--rounds 1]
                        [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.loadgen import run_load

MODEL = "mlp"
READY_TIMEOUT_S = 90.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
TIERS = ("frontend", "broker", "worker")


# --------------------------------------------------------------------------- processes & CPU
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may hold spaces and parentheses; everything after the last ')' is fixed.
    return raw[raw.rindex(")") + 2 :].split()


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(int(entry))
            if f:
                kids.setdefault(int(f[1]), []).append(int(entry))
    return kids


def tree_cpu_s(pid: int, kids: dict[int, list[int]] | None = None) -> float:
    """utime + stime (seconds) of ``pid`` and its live descendants."""
    kids = kids if kids is not None else _children_map()
    total, stack, seen = 0.0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        f = _stat_fields(p)
        if f:
            total += (int(f[11]) + int(f[12])) / CLK_TCK  # utime, stime (fields 14, 15)
        stack.extend(kids.get(p, ()))
    return total


def tree_wakeups(pid: int, kids: dict[int, list[int]]) -> int:
    """Voluntary context switches (sleeps that ended in a wake-up) of every thread in the tree."""
    total, stack, seen = 0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            tids = []
        for tid in tids:
            try:
                text = Path(f"/proc/{p}/task/{tid}/status").read_text()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
        stack.extend(kids.get(p, ()))
    return total


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent not idle (all cores), from /proc/stat."""
    vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    busy = sum(vals[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / CLK_TCK


class Proc:
    """A child process with its output in a log file, always stopped with SIGTERM then SIGKILL."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict | None = None):
        self.name = name
        self.argv = argv
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log.write(f"$ {shlex.join(argv)}\n".encode())
        self._log.flush()
        self.popen = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group: stop() reaches its children too
        )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 5.0) -> int | None:
        try:
            if self.alive():
                self._signal(signal.SIGTERM)
                try:
                    self.popen.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
                    self.popen.wait(timeout=grace)
            # Leftover members of its group (e.g. worker subprocesses) go too.
            self._signal(signal.SIGKILL)
        finally:
            self._log.close()
        return self.popen.returncode

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class StackError(RuntimeError):
    pass


def stop_all(procs: list[Proc]) -> dict[str, int | None]:
    codes = {}
    for p in reversed(procs):
        try:
            codes[p.name] = p.stop()
        except Exception as exc:
            codes[p.name] = None
            print(f"bench: stopping {p.name} failed: {exc}", file=sys.stderr)
    return codes


def wait_ready(url: str, procs: list[Proc], timeout: float = READY_TIMEOUT_S) -> float:
    """Block until the server at ``url`` says the model is ready; seconds it took."""
    import tritonclient.grpc as grpcclient

    t0 = time.monotonic()
    client = grpcclient.InferenceServerClient(url)
    last = ""
    try:
        while time.monotonic() - t0 < timeout:
            for p in procs:
                if not p.alive():
                    raise StackError(
                        f"{p.name} exited with {p.popen.returncode} before ready:\n{p.log_tail()}"
                    )
            try:
                if client.is_server_live(client_timeout=1) and client.is_model_ready(
                    MODEL, client_timeout=1
                ):
                    return time.monotonic() - t0
                last = "not ready yet"
            except Exception as exc:
                last = f"{type(exc).__name__}: {str(exc)[:200]}"
            time.sleep(0.2)
    finally:
        client.close()
    tails = "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in procs)
    raise StackError(f"{url} not ready after {timeout:.0f}s (last: {last})\n{tails}")


def sanity_check(url: str) -> str | None:
    """One request; None if the reply is an FP32 [1, 256] OUTPUT0, else what was wrong."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        inp = grpcclient.InferInput("INPUT0", [1, 256], "FP32")
        inp.set_data_from_numpy(np.ones((1, 256), np.float32))
        out = client.infer(MODEL, [inp], client_timeout=10).as_numpy("OUTPUT0")
        if out is None or out.shape != (1, 256) or out.dtype != np.float32:
            return f"unexpected OUTPUT0: {None if out is None else (out.shape, out.dtype)}"
        if not np.isfinite(out).all():
            return "OUTPUT0 has non-finite values"
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        client.close()


# --------------------------------------------------------------------------- statistics
def batch_snapshot(url: str) -> dict | None:
    """Cumulative executed-batch counts for the model, or None where statistics are unavailable."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        resp = client.get_inference_statistics(model_name=MODEL, client_timeout=2)
        stats = list(resp.model_stats)
        if not stats:
            return None
        by_size: dict[int, int] = {}
        inference = execution = 0
        for ms in stats:
            for b in ms.batch_stats:
                by_size[b.batch_size] = by_size.get(b.batch_size, 0) + b.compute_infer.count
            inference += ms.inference_count
            execution += ms.execution_count
        return {"by_size": by_size, "inference_count": inference, "execution_count": execution}
    except Exception:
        return None
    finally:
        client.close()


def mean_batch(before: dict | None, after: dict | None) -> tuple[float | None, dict]:
    if not before or not after:
        return None, {}
    sizes = {
        s: after["by_size"].get(s, 0) - before["by_size"].get(s, 0)
        for s in set(after["by_size"]) | set(before["by_size"])
    }
    sizes = {s: n for s, n in sorted(sizes.items()) if n > 0}
    batches = sum(sizes.values())
    if batches:
        return sum(s * n for s, n in sizes.items()) / batches, sizes
    execs = after["execution_count"] - before["execution_count"]
    if execs > 0:
        return (after["inference_count"] - before["inference_count"]) / execs, {}
    return None, {}


# --------------------------------------------------------------------------- one measurement
def measure(
    system: str,
    url: str,
    procs: list[Proc],
    concurrency: int,
    args: argparse.Namespace,
    stats_url: str | None,
) -> dict:
    """Closed-loop load at one concurrency, with CPU and batch statistics over the window."""
    marks: dict[str, dict] = {}

    def snap(label: str, client_pids: list[int]) -> None:
        kids = _children_map()
        marks[label] = {
            "t": time.monotonic(),
            "busy": machine_busy_s(),
            "cpu": {p.name: tree_cpu_s(p.pid, kids) for p in procs},
            "wakeups": {p.name: tree_wakeups(p.pid, kids) for p in procs},
            "client": sum(tree_cpu_s(pid, kids) for pid in client_pids),
            "self": tree_cpu_s(os.getpid(), {}),
            "stats": batch_snapshot(stats_url) if stats_url else None,
        }

    rec: dict = {"system": system, "concurrency": concurrency, "loadavg": _loadavg()}
    try:
        res = run_load(
            url,
            MODEL,
            concurrency,
            args.duration,
            args.warmup,
            args.processes,
            on_window_start=lambda pids: snap("start", pids),
            on_window_end=lambda pids: snap("end", pids),
        )
    except Exception as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
        rec["dead"] = {p.name: p.popen.returncode for p in procs if not p.alive()}
        return rec
    rec.update(res.to_dict())
    if "start" in marks and "end" in marks:
        a, b = marks["start"], marks["end"]
        window = b["t"] - a["t"]
        cpu = {name: b["cpu"][name] - a["cpu"][name] for name in a["cpu"]}
        client = b["client"] - a["client"]
        ours = sum(cpu.values()) + client + (b["self"] - a["self"])
        per_k = (lambda s: s / res.requests * 1000) if res.requests else (lambda s: None)
        rec["window_s"] = window
        rec["cpu_s"] = cpu
        rec["cpu_s_per_1k"] = {name: per_k(s) for name, s in cpu.items()}
        rec["client_cpu_s_per_1k"] = per_k(client)
        rec["cpu_util"] = {name: s / window for name, s in cpu.items()}
        wakeups = {name: b["wakeups"][name] - a["wakeups"][name] for name in a["wakeups"]}
        rec["wakeups_per_req"] = {
            name: (n / res.requests if res.requests else None) for name, n in wakeups.items()
        }
        rec["client_cpu_util"] = client / window
        # CPU used during the window by processes this run did not start: the noise gauge.
        rec["foreign_cpu_util"] = max(0.0, (b["busy"] - a["busy"]) - ours) / window
        rec["mean_batch"], rec["batch_sizes"] = mean_batch(a["stats"], b["stats"])
    rec["dead"] = {p.name: p.popen.returncode for p in procs if not p.alive()}
    return rec


def idle_cpu(procs: list[Proc], seconds: float) -> dict[str, float]:
    """Each process's CPU use (fraction of one core) while nothing is sent: polling, heartbeats."""
    if seconds <= 0:
        return {}
    kids = _children_map()
    before = {p.name: tree_cpu_s(p.pid, kids) for p in procs}
    t0 = time.monotonic()
    time.sleep(seconds)
    kids = _children_map()
    window = time.monotonic() - t0
    return {p.name: (tree_cpu_s(p.pid, kids) - before[p.name]) / window for p in procs}


def _loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# --------------------------------------------------------------------------- systems
def run_bare(args, log_dir: Path, rnd: int) -> list[dict]:
    port = free_port()
    url = f"127.0.0.1:{port}"
    procs: list[Proc] = []
    out: list[dict] = []
    try:
        procs.append(
            Proc(
                "server",
                [sys.executable, "-m", "bench.bare_server", "--port", str(port)],
                log_dir / f"r{rnd}-bare",
            )
        )
        wait_ready(url, procs)
        for c in args.concurrency:
            out.append(measure("bare", url, procs, c, args, None))
        out.append({"system": "bare", "idle_cpu_util": idle_cpu(procs, args.idle_seconds)})
    except StackError as exc:
        out.append({"system": "bare", "error": str(exc)})
    finally:
        stop_all(procs)
    return out


def run_ours(args, log_dir: Path, rnd: int, repo: Path) -> tuple[list[dict], dict]:
    p_front, p_work, p_http = free_port(), free_port(), free_port()
    front_bind, work_bind = f"tcp://127.0.0.1:{p_front}", f"tcp://127.0.0.1:{p_work}"
    url = f"127.0.0.1:{p_http}"
    d = log_dir / f"r{rnd}-ours"
    py = sys.executable
    one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs: list[Proc] = []
    out: list[dict] = []
    info: dict = {}
    try:
        t0 = time.monotonic()
        procs.append(
            Proc(
                "broker",
                [
                    py,
                    "-m",
                    "broker",
                    "--frontend-bind",
                    front_bind,
                    "--worker-bind",
                    work_bind,
                    *shlex.split(args.broker_args),
                ],
                d,
            )
        )
        procs.append(
            Proc(
                "worker",
                [
                    py,
                    "-m",
                    "worker",
                    "--broker",
                    work_bind,
                    "--model-repository",
                    str(repo),
                    "--device",
                    "cpu",
                    "--torch-threads",
                    "1",
                    *shlex.split(args.worker_args),
                ],
                d,
                env=one_thread,
            )
        )
        procs.append(
            Proc(
                "frontend",
                [
                    py,
                    "-m",
                    "frontend",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(p_http),
                    "--broker",
                    front_bind,
                    *shlex.split(args.frontend_args),
                ],
                d,
            )
        )
        wait_ready(url, procs)
        info["ready_s"] = time.monotonic() - t0
        info["sanity_error"] = sanity_check(url)
        info["statistics"] = batch_snapshot(url) is not None
        time.sleep(1.0)  # let start-up work (warm-up, announcements) settle first
        info["idle_cpu_util"] = idle_cpu(procs, args.idle_seconds)
        for c in args.concurrency:
            out.append(measure("ours", url, procs, c, args, url))
    except StackError as exc:
        out.append({"system": "ours", "error": str(exc)})
    finally:
        info["exit_codes"] = stop_all(procs)
        info["logs"] = str(d)
    return out, info


def build_repo(repo: Path, log_dir: Path) -> str | None:
    """``python -m worker.demo_models DIR``; None on success, else the error."""
    log = log_dir / "demo_models.log"
    with open(log, "wb") as f:
        r = subprocess.run(
            [sys.executable, "-m", "worker.demo_models", str(repo)],
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
    if r.returncode != 0 or not (repo / MODEL).is_dir():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
        return f"worker.demo_models exited {r.returncode}:\n{tail}"
    return None


def run_inprocess(repo: Path | None, seconds: float) -> dict:
    src = ["--model-repository", str(repo)] if repo else ["--reference"]
    r = subprocess.run(
        [sys.executable, "-m", "bench.inprocess", *src, "--json", "--seconds", str(seconds)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    )
    if r.returncode != 0:
        return {"error": r.stderr[-2000:]}
    return json.loads(r.stdout)


# --------------------------------------------------------------------------- report
def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(rounds: list[dict], concurrencies: list[int]) -> list[dict]:
    """Per (system, concurrency): medians over rounds; ratios taken within each round first."""
    rows = []
    for system in ("bare", "ours"):
        for c in concurrencies:
            recs, ratios, p50r, p50d = [], [], [], []
            for rnd in rounds:
                mine = _find(rnd["results"], system, c)
                bare = _find(rnd["results"], "bare", c)
                if not mine:
                    continue
                recs.append(mine)
                if bare and bare.get("throughput") and mine.get("p50_ms") is not None:
                    ratios.append(mine["throughput"] / bare["throughput"])
                    if bare.get("p50_ms"):
                        p50r.append(mine["p50_ms"] / bare["p50_ms"])
                        p50d.append(mine["p50_ms"] - bare["p50_ms"])
            if not recs:
                continue
            ok = [r for r in recs if "error" not in r]
            names = sorted({n for r in ok for n in r.get("cpu_s_per_1k", {})})
            rows.append(
                {
                    "system": system,
                    "concurrency": c,
                    "rounds": len(ok),
                    "failed": [r["error"] for r in recs if "error" in r],
                    "throughput": _median([r.get("throughput") for r in ok]),
                    "p50_ms": _median([r.get("p50_ms") for r in ok]),
                    "p90_ms": _median([r.get("p90_ms") for r in ok]),
                    "p99_ms": _median([r.get("p99_ms") for r in ok]),
                    "errors": sum(r.get("errors", 0) for r in ok),
                    "throughput_vs_bare": _median(ratios),
                    "p50_vs_bare": _median(p50r),
                    "p50_minus_bare_ms": _median(p50d),
                    "cpu_s_per_1k": {
                        n: _median([r.get("cpu_s_per_1k", {}).get(n) for r in ok]) for n in names
                    },
                    "client_cpu_s_per_1k": _median([r.get("client_cpu_s_per_1k") for r in ok]),
                    "wakeups_per_req": {
                        n: _median([r.get("wakeups_per_req", {}).get(n) for r in ok]) for n in names
                    },
                    "foreign_cpu_util": _median([r.get("foreign_cpu_util") for r in ok]),
                    "mean_batch": _median([r.get("mean_batch") for r in ok]),
                }
            )
    return rows


def _find(results: list[dict], system: str, c: int) -> dict | None:
    for r in results:
        if r.get("system") == system and r.get("concurrency") == c:
            return r
    return None


def _f(x, fmt: str, none: str = "-") -> str:
    return none if x is None else format(x, fmt)


def to_markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [
        f"# Benchmark {meta['timestamp']}",
        "",
        f"{meta['cpus']} CPUs, git {meta['git']}, {meta['rounds']} round(s) x "
        f"{meta['duration_s']:g} s measured after {meta['warmup_s']:g} s warm-up, "
        f"{meta['client_processes']} client processes. Medians over rounds; ratios are against the "
        "bare grpc.aio server measured in the same round. The machine is shared and small: read "
        "the ratios, not the absolute numbers, and see 'other CPU' for how busy it was otherwise.",
        "",
        "| system | conc. | req/s | p50 ms | p90 ms | p99 ms | errors | req/s vs bare "
        "| p50 vs bare | CPU s per 1k req (per tier) | wake-ups/req (per tier) | client CPU s/1k "
        "| other CPU | mean batch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in report["summary"]:
        if not r["rounds"]:
            lines.append(f"| {r['system']} | {r['concurrency']} | failed | | | | | | | | | | | |")
            continue
        cpu = r["cpu_s_per_1k"]
        cpu_txt = " · ".join(f"{n} {_f(v, '.3f')}" for n, v in cpu.items())
        if len(cpu) > 1 and all(v is not None for v in cpu.values()):
            cpu_txt += f" (Σ {sum(cpu.values()):.3f})"
        wake = r["wakeups_per_req"]
        wake_txt = " · ".join(f"{n} {_f(v, '.1f')}" for n, v in wake.items())
        if len(wake) > 1 and all(v is not None for v in wake.values()):
            wake_txt += f" (Σ {sum(wake.values()):.1f})"
        ratio = "1 (ref)" if r["system"] == "bare" else _f(r["throughput_vs_bare"], ".2f") + "x"
        p50r = (
            "1 (ref)"
            if r["system"] == "bare"
            else (_f(r["p50_vs_bare"], ".2f") + f"x (+{_f(r['p50_minus_bare_ms'], '.2f')} ms)")
        )
        other = _f(None if r["foreign_cpu_util"] is None else r["foreign_cpu_util"] * 100, ".0f")
        lines.append(
            f"| {r['system']} | {r['concurrency']} | {_f(r['throughput'], ',.0f')} "
            f"| {_f(r['p50_ms'], '.2f')} | {_f(r['p90_ms'], '.2f')} | {_f(r['p99_ms'], '.2f')} "
            f"| {r['errors']} | {ratio} | {p50r} | {cpu_txt} "
            f"| {wake_txt} "
            f"| {_f(r['client_cpu_s_per_1k'], '.3f')} | {other}% "
            f"| {_f(r['mean_batch'], '.2f')} |"
        )
    lines += [
        "",
        "CPU s per 1k req = CPU ms per request (utime+stime over the measured window).",
        "wake-ups/req = voluntary context switches per request, per server process (all threads).",
        "'other CPU' = CPU (% of one core) used during the window by processes this run did "
        "not start.",
    ]
    idle: dict[str, list[float]] = {}
    for rnd in report["rounds"]:
        samples = [r.get("idle_cpu_util") for r in rnd["results"]]
        samples.append(rnd.get("ours", {}).get("idle_cpu_util"))
        for sample in samples:
            for name, util in (sample or {}).items():
                idle.setdefault(name, []).append(util)
    if idle:
        lines.append(
            "Idle CPU (% of one core, stack up, nothing sent; median over rounds): "
            + ", ".join(f"{n} {_median(v) * 100:.1f}%" for n, v in idle.items())
            + "."
        )
    failures = [(r["system"], r["concurrency"], e) for r in report["summary"] for e in r["failed"]]
    failures += [
        (res["system"], "-", res["error"])
        for rnd in report["rounds"]
        for res in rnd["results"]
        if "error" in res and "concurrency" not in res
    ]
    if report.get("repo_error"):
        failures.append(("repo", "-", report["repo_error"]))
    for rnd in report["rounds"]:
        if rnd.get("ours", {}).get("sanity_error"):
            failures.append(("ours", "sanity", rnd["ours"]["sanity_error"]))
    if failures:
        lines += ["", "## Failures", ""]
        for system, c, err in failures:
            lines.append(f"- **{system} c={c}**: " + err.strip().replace("\n", "\n  "))

    ip = report.get("inprocess") or {}
    lines += ["", "## Model in-process (one torch thread, no serving)", ""]
    if "batches" in ip:
        from bench.inprocess import to_markdown as ip_md

        lines += [f"`{ip['model_file']}`, torch {ip['torch']}", "", ip_md(ip)]
    else:
        lines.append(f"failed: {ip.get('error', 'not run')}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main
def _git() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or "?"
        )
    except Exception:
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--concurrency", default="1,64", help="comma-separated list")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--inprocess-seconds", type=float, default=0.5)
    parser.add_argument(
        "--idle-seconds", type=float, default=3.0, help="sample idle CPU this long (0 = off)"
    )
    parser.add_argument("--skip-ours", action="store_true", help="baselines only")
    parser.add_argument("--broker-args", default="", help="extra broker arguments")
    parser.add_argument("--worker-args", default="", help="extra worker arguments")
    parser.add_argument("--frontend-args", default="", help="extra frontend arguments")
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    log_dir = args.out / "logs" / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "meta": {
            "timestamp": stamp,
            "git": _git(),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency,
            "rounds": args.rounds,
            "client_processes": args.processes,
            "logs": str(log_dir),
        },
        "rounds": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-repo-") as tmp:
        repo: Path | None = Path(tmp) / "models"
        err = build_repo(repo, log_dir)
        if err:
            report["repo_error"] = err
            print(
                f"bench: cannot build the demo repository; our stack is skipped\n{err}",
                file=sys.stderr,
            )
            repo = None
        for rnd in range(args.rounds):
            entry: dict = {"round": rnd, "results": []}
            print(f"bench: round {rnd + 1}/{args.rounds}: bare server", file=sys.stderr)
            entry["results"] += run_bare(args, log_dir, rnd)
            if repo is not None and not args.skip_ours:
                print(f"bench: round {rnd + 1}/{args.rounds}: our stack", file=sys.stderr)
                res, info = run_ours(args, log_dir, rnd, repo)
                entry["results"] += res
                entry["ours"] = info
            report["rounds"].append(entry)
        print("bench: model in-process", file=sys.stderr)
        report["inprocess"] = run_inprocess(repo, args.inprocess_seconds)

    report["summary"] = summarize(report["rounds"], args.concurrency)
    (args.out / f"{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    md = to_markdown(report)
    (args.out / "latest.md").write_text(md)
    print(md)
    failed = any(r["failed"] or not r["rounds"] for r in report["summary"])
    return 1 if failed or report.get("repo_error") else 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark driver (``make bench``): our stack against baselines measured in the same run.

Every round starts, side by side on the same machine:

1. for each benchmark model, the bare grpc.aio server (``bench.bare_server``) answering with that
   model's output size, the ceiling of Python gRPC;
2. our stack: broker, one worker and one frontend as separate processes, started the way users
   start them, on a temporary model repository holding the demo models
   (``python -m worker.demo_models DIR``) and the compute-heavy ``wide_mlp``
   (``python -m bench.wide_model DIR``);

then measures each model at every requested concurrency with the closed-loop load generator
(``bench.loadgen``), both systems at one point back to back before the next point (in alternating
order), so that a ratio compares measurements seconds apart; idle, both use no CPU.
Then, once per model, the model called in-process (``bench.inprocess``) at the batch sizes the
worker actually executed, so the worker's compute time per batch (from
``get_inference_statistics``: ``batch_stats[b].compute_infer``) is set against the bare model at
the same batch size.

The machine is small and shared, so absolute numbers are noise-prone: every figure for our stack is
reported as a ratio against baselines measured in the same run. Over the measured window it also
records CPU seconds per 1,000 requests of each process (utime + stime from /proc, the process and
its descendants), wake-ups per request, resident memory, the CPU that processes not started by this
run used (a noise gauge), and, where the server reports statistics, the mean executed batch size.

Writes ``<out>/run-<UTC timestamp>.json``, ``<out>/run-latest.md``, ``<out>/run-latest.png``
(throughput against p99 latency) and regenerates ``<out>/latest.md`` (see ``bench.report``);
process logs go to ``<out>/logs/<UTC timestamp>/``.

    python -m bench.run [--quick] [--duration 8] [--warmup 2] [--concurrency 1,8,32,64,128]
                        [--models mlp,wide_mlp] [--rounds 1] [--out bench/results]
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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.loadgen import run_load

MODELS: dict[str, int] = {"mlp": 256, "wide_mlp": 1024}
"""Benchmark models and their FP32 values per row (INPUT0 and OUTPUT0)."""
DEFAULT_MODELS = "mlp,wide_mlp"
DEFAULT_CONCURRENCY = "1,8,32,64,128"
QUICK_CONCURRENCY = "1,64"
READY_TIMEOUT_S = 90.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
TIERS = ("frontend", "broker", "worker")
POWERS_OF_TWO = (1, 2, 4, 8, 16, 32, 64)
MAX_INPROCESS_SIZES = 16


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


def _tree(pid: int, kids: dict[int, list[int]]) -> list[int]:
    out, stack, seen = [], [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        out.append(p)
        stack.extend(kids.get(p, ()))
    return out


def tree_cpu_s(pid: int, kids: dict[int, list[int]] | None = None) -> float:
    """utime + stime (seconds) of ``pid`` and its live descendants."""
    kids = kids if kids is not None else _children_map()
    total = 0.0
    for p in _tree(pid, kids):
        f = _stat_fields(p)
        if f:
            total += (int(f[11]) + int(f[12])) / CLK_TCK  # utime, stime (fields 14, 15)
    return total


def tree_wakeups(pid: int, kids: dict[int, list[int]]) -> int:
    """Voluntary context switches (sleeps that ended in a wake-up) of every thread in the tree."""
    total = 0
    for p in _tree(pid, kids):
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
    return total


def proc_mem_mb(pid: int) -> dict[str, float]:
    """VmRSS (resident now) and VmHWM (peak resident) of one process, in MiB."""
    out: dict[str, float] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0]) / 1024
    return out


def tree_rss_mb(pid: int, kids: dict[int, list[int]]) -> float:
    """Resident memory of ``pid`` and its live descendants, MiB (shared pages count each time)."""
    return sum(proc_mem_mb(p).get("VmRSS", 0.0) for p in _tree(pid, kids))


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent not idle (all cores), from /proc/stat."""
    vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    busy = sum(vals[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / CLK_TCK


class Proc:
    """A child process with its output in a log file, always stopped with SIGTERM then SIGKILL."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_dir: Path,
        env: dict | None = None,
        cwd: str | None = None,
        stop_signal: int = signal.SIGTERM,
        grace_s: float = 5.0,
    ):
        self.name = name
        self.argv = argv
        self.stop_signal = stop_signal
        self.grace_s = grace_s
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
            cwd=cwd,
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

    def stop(self, grace: float | None = None) -> int | None:
        grace = self.grace_s if grace is None else grace
        try:
            if self.alive():
                self._signal(self.stop_signal)
                try:
                    self.popen.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
                    self.popen.wait(timeout=grace)
            # Leftover members of its group (e.g. worker subprocesses) go too, and so does
            # anything that made a group of its own inside the session it was started in.
            self._signal(signal.SIGKILL)
            self._kill_session()
        finally:
            self._log.close()
        return self.popen.returncode

    def _kill_session(self) -> None:
        """SIGKILL every process left in the session this child leads (its descendants)."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == self.pid:
                continue
            f = _stat_fields(int(entry))
            if f and int(f[3]) == self.pid:  # field 6: session id
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

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


@dataclass
class Target:
    """A running system under test: where to send requests and which processes are its own."""

    system: str
    url: str
    procs: list[Proc]
    stats: bool = False  # answers get_inference_statistics with batch_stats
    stats_headers: dict[str, str] | None = None
    infer_headers: dict[str, str] | None = None


def wait_ready(
    url: str,
    procs: list[Proc],
    models: list[str],
    timeout: float = READY_TIMEOUT_S,
    headers: dict[str, str] | None = None,
) -> float:
    """Block until the server at ``url`` says every model is ready; seconds it took."""
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
                if client.is_server_live(headers=headers, client_timeout=1) and all(
                    client.is_model_ready(m, headers=headers, client_timeout=1) for m in models
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


def sanity_check(url: str, model: str, headers: dict[str, str] | None = None) -> str | None:
    """One request; None if the reply is an FP32 [1, width] OUTPUT0, else what was wrong."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    width = MODELS[model]
    client = grpcclient.InferenceServerClient(url)
    try:
        inp = grpcclient.InferInput("INPUT0", [1, width], "FP32")
        inp.set_data_from_numpy(np.ones((1, width), np.float32))
        out = client.infer(model, [inp], headers=headers, client_timeout=10).as_numpy("OUTPUT0")
        if out is None or out.shape != (1, width) or out.dtype != np.float32:
            return f"{model}: unexpected OUTPUT0: {None if out is None else (out.shape, out.dtype)}"
        if not np.isfinite(out).all():
            return f"{model}: OUTPUT0 has non-finite values"
        return None
    except Exception as exc:
        return f"{model}: {type(exc).__name__}: {str(exc)[:300]}"
    finally:
        client.close()


# --------------------------------------------------------------------------- statistics
def batch_snapshot(url: str, model: str, headers: dict[str, str] | None = None) -> dict | None:
    """Cumulative executed-batch counts and compute time for the model, None where unavailable.

    ``by_size`` maps rows per executed batch to [batches, compute_infer ns]; ``infer_ns`` is
    ``inference_stats.compute_infer.ns`` (Triton charges every request its batch's full time).
    """
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        resp = client.get_inference_statistics(model_name=model, headers=headers, client_timeout=2)
        stats = list(resp.model_stats)
        if not stats:
            return None
        by_size: dict[int, list[int]] = {}
        inference = execution = infer_ns = 0
        for ms in stats:
            for b in ms.batch_stats:
                cur = by_size.setdefault(b.batch_size, [0, 0])
                cur[0] += b.compute_infer.count
                cur[1] += b.compute_infer.ns
            inference += ms.inference_count
            execution += ms.execution_count
            infer_ns += ms.inference_stats.compute_infer.ns
        return {
            "by_size": by_size,
            "inference_count": inference,
            "execution_count": execution,
            "infer_ns": infer_ns,
        }
    except Exception:
        return None
    finally:
        client.close()


def batch_delta(before: dict | None, after: dict | None) -> dict | None:
    """What executed between two snapshots: batches per size, compute time, rows."""
    if not before or not after:
        return None
    sizes: dict[int, dict[str, int]] = {}
    for s, (n, ns) in sorted(after["by_size"].items()):
        n0, ns0 = before["by_size"].get(s, [0, 0])
        if n - n0 > 0:
            sizes[s] = {"n": n - n0, "ns": ns - ns0}
    rows = sum(s * v["n"] for s, v in sizes.items())
    batches = sum(v["n"] for v in sizes.values())
    total_ns = sum(v["ns"] for v in sizes.values())
    inferences = after["inference_count"] - before["inference_count"]
    execs = after["execution_count"] - before["execution_count"]
    out: dict = {"sizes": sizes, "rows": rows, "batches": batches, "ns": total_ns}
    if batches:
        out["mean_batch"] = rows / batches
    elif execs > 0:
        out["mean_batch"] = inferences / execs
    if rows:
        out["us_per_row"] = total_ns / rows / 1e3
    if inferences > 0:
        # The issue's figure: inference_stats.compute_infer.ns / inference_count. Every request
        # is charged its whole batch, so this is the mean batch time seen by a request.
        out["triton_infer_us_per_inference"] = (
            (after["infer_ns"] - before["infer_ns"]) / inferences / 1e3
        )
    return out


# --------------------------------------------------------------------------- one measurement
def measure(
    target: Target,
    model: str,
    concurrency: int,
    args: argparse.Namespace,
    siblings: Sequence[Proc] = (),
) -> dict:
    """Closed-loop load at one concurrency; CPU, memory and batch statistics over the window.
    ``siblings``: processes of other systems this run keeps up meanwhile (idle), whose CPU
    does not count as the noise of processes this run did not start."""
    marks: dict[str, dict] = {}
    procs = target.procs

    def snap(label: str, client_pids: list[int]) -> None:
        kids = _children_map()
        marks[label] = {
            "t": time.monotonic(),
            "busy": machine_busy_s(),
            "cpu": {p.name: tree_cpu_s(p.pid, kids) for p in procs},
            "wakeups": {p.name: tree_wakeups(p.pid, kids) for p in procs},
            "rss": {p.name: tree_rss_mb(p.pid, kids) for p in procs},
            "client": sum(tree_cpu_s(pid, kids) for pid in client_pids),
            "siblings": sum(tree_cpu_s(p.pid, kids) for p in siblings),
            "self": tree_cpu_s(os.getpid(), {}),
            "stats": (
                batch_snapshot(target.url, model, target.stats_headers) if target.stats else None
            ),
        }

    rec: dict = {
        "system": target.system,
        "model": model,
        "concurrency": concurrency,
        "loadavg": _loadavg(),
    }
    try:
        res = run_load(
            target.url,
            model,
            concurrency,
            args.duration,
            args.warmup,
            args.processes,
            on_window_start=lambda pids: snap("start", pids),
            on_window_end=lambda pids: snap("end", pids),
            width=MODELS[model],
            headers=target.infer_headers,
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
        ours += b["siblings"] - a["siblings"]
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
        rec["rss_mb"] = b["rss"]
        rec["client_cpu_util"] = client / window
        # CPU used during the window by processes this run did not start: the noise gauge.
        rec["foreign_cpu_util"] = max(0.0, (b["busy"] - a["busy"]) - ours) / window
        delta = batch_delta(a["stats"], b["stats"])
        if delta:
            rec["compute"] = delta
            rec["mean_batch"] = delta.get("mean_batch")
            rec["batch_sizes"] = {s: v["n"] for s, v in delta["sizes"].items()}
    rec["dead"] = {p.name: p.popen.returncode for p in procs if not p.alive()}
    return rec


def sweep(target: Target, models: list[str], args: argparse.Namespace) -> list[dict]:
    out = []
    for model in models:
        for c in args.concurrency:
            print(f"bench:   {target.system} {model} c={c}", file=sys.stderr)
            out.append(measure(target, model, c, args))
    return out


def sweep_interleaved(
    targets: dict[str, list[Target]], args: argparse.Namespace, rnd: int = 0
) -> list[dict]:
    """Every system at one point, back to back, before the next point: a ratio then compares
    measurements seconds apart instead of minutes, which on a shared VM drift by 20 %.

    ``targets`` maps each model to the systems (all up at once) that serve it. The order of
    the systems alternates from point to point and round to round, so neither always runs
    first (on caches another system warmed, or after a quiet spell).
    """
    out = []
    step = rnd
    everyone = list({id(t): t for ts in targets.values() for t in ts}.values())
    for model, systems in targets.items():
        for c in args.concurrency:
            order = systems if step % 2 == 0 else systems[::-1]
            step += 1
            for target in order:
                print(f"bench:   {target.system} {model} c={c}", file=sys.stderr)
                others = [p for t in everyone if t is not target for p in t.procs]
                out.append(measure(target, model, c, args, others))
    return out


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


def idle_rss(procs: list[Proc]) -> dict[str, float]:
    kids = _children_map()
    return {p.name: tree_rss_mb(p.pid, kids) for p in procs}


def _loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# --------------------------------------------------------------------------- systems
def start_bare(args, log_dir: Path, rnd: int, model: str) -> Target:
    """The bare grpc.aio server answering ``model`` with a fixed response of its output size."""
    port = free_port()
    url = f"127.0.0.1:{port}"
    proc = Proc(
        "server",
        [
            sys.executable,
            "-m",
            "bench.bare_server",
            "--port",
            str(port),
            "--model",
            model,
            "--width",
            str(MODELS[model]),
        ],
        log_dir / f"r{rnd}-bare-{model}",
    )
    try:
        wait_ready(url, [proc], [model])
    except BaseException:
        stop_all([proc])
        raise
    return Target("bare", url, [proc])


def bare_idle(target: Target, model: str, args) -> dict:
    return {
        "system": target.system,
        "model": model,
        "idle_cpu_util": idle_cpu(target.procs, args.idle_seconds),
        "idle_rss_mb": idle_rss(target.procs),
    }


def start_ours(args, log_dir: Path, repo: Path, models: list[str]) -> tuple[Target, dict]:
    """Broker, worker, frontend on free loopback ports; waits until every model is ready."""
    p_front, p_work, p_grpc = free_port(), free_port(), free_port()
    front_bind, work_bind = f"tcp://127.0.0.1:{p_front}", f"tcp://127.0.0.1:{p_work}"
    url = f"127.0.0.1:{p_grpc}"
    py = sys.executable
    one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs: list[Proc] = []
    info: dict = {"logs": str(log_dir)}
    t0 = time.monotonic()
    try:
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
                log_dir,
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
                log_dir,
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
                    str(p_grpc),
                    "--broker",
                    front_bind,
                    *shlex.split(args.frontend_args),
                ],
                log_dir,
            )
        )
        wait_ready(url, procs, models)
    except BaseException:
        info["exit_codes"] = stop_all(procs)
        raise
    info["ready_s"] = time.monotonic() - t0
    errs = [e for m in models if (e := sanity_check(url, m))]
    info["sanity_error"] = "; ".join(errs) or None
    info["statistics"] = batch_snapshot(url, models[0]) is not None
    return Target("ours", url, procs, stats=True), info


def start_ours_idle(args, log_dir: Path, rnd: int, repo: Path, models: list[str]):
    """``start_ours``, then its idle CPU and memory once start-up work has settled."""
    target, info = start_ours(args, log_dir / f"r{rnd}-ours", repo, models)
    try:
        time.sleep(1.0)  # let start-up work (warm-up, announcements) settle first
        info["idle_cpu_util"] = idle_cpu(target.procs, args.idle_seconds)
        info["idle_rss_mb"] = idle_rss(target.procs)
    except BaseException:
        stop_all(target.procs)
        raise
    return target, info


def run_round(args, log_dir: Path, rnd: int, repo: Path | None, models: list[str]) -> dict:
    """One round of ``make bench``: the bare server for each model and our stack, all up at
    once, measured point by point (``sweep_interleaved``)."""
    entry: dict = {"round": rnd, "results": [], "info": {}}
    out: list[dict] = entry["results"]
    bare: dict[str, Target] = {}
    ours: Target | None = None
    try:
        for model in models:
            print(f"bench: round {rnd + 1}/{args.rounds}: starting bare, {model}", file=sys.stderr)
            try:
                bare[model] = start_bare(args, log_dir, rnd, model)
            except StackError as exc:
                out.append({"system": "bare", "model": model, "error": str(exc)})
        if repo is not None and not args.skip_ours:
            print(f"bench: round {rnd + 1}/{args.rounds}: starting our stack", file=sys.stderr)
            try:
                ours, entry["info"]["ours"] = start_ours_idle(args, log_dir, rnd, repo, models)
            except StackError as exc:
                out.append({"system": "ours", "error": str(exc)})
        targets = {m: [t for t in (bare.get(m), ours) if t is not None] for m in models}
        out += sweep_interleaved(targets, args, rnd)
        out += [bare_idle(t, m, args) for m, t in bare.items()]
    finally:
        for t in bare.values():
            stop_all(t.procs)
        if ours is not None:
            entry["info"].setdefault("ours", {})["exit_codes"] = stop_all(ours.procs)
    return entry


def build_repo(repo: Path, log_dir: Path, models: list[str]) -> str | None:
    """Demo models plus ``wide_mlp`` into ``repo``; None on success, else the error."""
    steps = [[sys.executable, "-m", "worker.demo_models", str(repo)]]
    if "wide_mlp" in models:
        steps.append([sys.executable, "-m", "bench.wide_model", str(repo)])
    log = log_dir / "build_models.log"
    with open(log, "ab") as f:
        for argv in steps:
            r = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, timeout=300)
            if r.returncode != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
                return f"{shlex.join(argv[1:])} exited {r.returncode}:\n{tail}"
    missing = [m for m in models if not (repo / m).is_dir()]
    return f"models missing from the repository: {missing}" if missing else None


def run_inprocess(repo: Path | None, model: str, sizes: list[int], seconds: float) -> dict:
    if repo is not None:
        src = ["--model-repository", str(repo), "--model", model]
    elif model == "mlp":
        src = ["--reference"]
    else:
        return {"error": "no model repository"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.inprocess",
            *src,
            "--json",
            "--seconds",
            str(seconds),
            "--batch-sizes",
            ",".join(map(str, sizes)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    )
    if r.returncode != 0:
        return {"error": r.stderr[-2000:]}
    return json.loads(r.stdout)


def inprocess_sizes(records: list[dict], model: str) -> list[int]:
    """Powers of two plus the executed batch sizes that carried most of the compute time."""
    ns: dict[int, int] = {}
    for r in records:
        if r.get("model") != model:
            continue
        for s, v in (r.get("compute") or {}).get("sizes", {}).items():
            ns[int(s)] = ns.get(int(s), 0) + v["ns"]
    chosen = set(POWERS_OF_TWO)
    total = sum(ns.values())
    covered = 0
    for s, t in sorted(ns.items(), key=lambda kv: -kv[1]):
        if covered >= 0.95 * total or len(chosen) >= len(POWERS_OF_TWO) + MAX_INPROCESS_SIZES:
            break
        chosen.add(s)
        covered += t
    return sorted(chosen)


def inprocess_call_us(ip: dict, size: int) -> tuple[float | None, bool]:
    """In-process µs per call at ``size`` rows (interpolated linearly between measured sizes)."""
    rows = {r["batch_size"]: r["us_per_call"] for r in ip.get("batches", [])}
    if not rows:
        return None, False
    if size in rows:
        return rows[size], False
    lo = max((s for s in rows if s < size), default=None)
    hi = min((s for s in rows if s > size), default=None)
    if lo is None or hi is None:
        near = lo if hi is None else hi
        return rows[near] * size / near, True
    f = (size - lo) / (hi - lo)
    return rows[lo] + f * (rows[hi] - rows[lo]), True


def compare_compute(compute: dict | None, ip: dict | None) -> dict | None:
    """The server's compute time against the in-process model on the same batches."""
    if not compute or not ip or "batches" not in ip or not compute.get("rows"):
        return None
    ref_ns = 0.0
    interp_ns = 0.0
    for s, v in compute["sizes"].items():
        us, interpolated = inprocess_call_us(ip, int(s))
        if us is None:
            return None
        ref_ns += v["n"] * us * 1e3
        if interpolated:
            interp_ns += v["n"] * us * 1e3
    if not ref_ns:
        return None
    return {
        "server_us_per_row": compute["ns"] / compute["rows"] / 1e3,
        "inprocess_us_per_row": ref_ns / compute["rows"] / 1e3,
        "ratio": compute["ns"] / ref_ns,
        "interpolated_share": interp_ns / ref_ns,
    }


def attach_inprocess(report: dict) -> None:
    """Fill ``compute_vs_inprocess`` of every record with statistics."""
    for rnd in report["rounds"]:
        for r in rnd["results"]:
            cmp = compare_compute(r.get("compute"), report["inprocess"].get(r.get("model", "")))
            if cmp:
                r["compute_vs_inprocess"] = cmp


# --------------------------------------------------------------------------- report
def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(
    rounds: list[dict], concurrencies: list[int], systems: list[str], models: list[str]
) -> list[dict]:
    """Per (model, system, concurrency): medians over rounds; ratios taken within a round first."""
    rows = []
    for model in models:
        for system in systems:
            for c in concurrencies:
                recs, ratios, p50r, p50d, p99r = [], [], [], [], []
                for rnd in rounds:
                    mine = _find(rnd["results"], system, model, c)
                    bare = _find(rnd["results"], "bare", model, c)
                    if not mine:
                        continue
                    recs.append(mine)
                    if bare and bare.get("throughput") and mine.get("p50_ms") is not None:
                        ratios.append(mine["throughput"] / bare["throughput"])
                        if bare.get("p50_ms"):
                            p50r.append(mine["p50_ms"] / bare["p50_ms"])
                            p50d.append(mine["p50_ms"] - bare["p50_ms"])
                        if bare.get("p99_ms"):
                            p99r.append(mine["p99_ms"] / bare["p99_ms"])
                if not recs:
                    continue
                ok = [r for r in recs if "error" not in r]
                names = sorted({n for r in ok for n in r.get("cpu_s_per_1k", {})})
                cmp = [r.get("compute_vs_inprocess") or {} for r in ok]
                rows.append(
                    {
                        "system": system,
                        "model": model,
                        "concurrency": c,
                        "rounds": len(ok),
                        "failed": [r["error"] for r in recs if "error" in r],
                        "throughput": _median([r.get("throughput") for r in ok]),
                        "p50_ms": _median([r.get("p50_ms") for r in ok]),
                        "p90_ms": _median([r.get("p90_ms") for r in ok]),
                        "p99_ms": _median([r.get("p99_ms") for r in ok]),
                        "errors": sum(r.get("errors", 0) for r in ok),
                        "error_samples": [s for r in ok for s in r.get("error_samples", [])][:3],
                        "throughput_vs_bare": _median(ratios),
                        "p50_vs_bare": _median(p50r),
                        "p50_minus_bare_ms": _median(p50d),
                        "p99_vs_bare": _median(p99r),
                        "cpu_s_per_1k": {
                            n: _median([r.get("cpu_s_per_1k", {}).get(n) for r in ok])
                            for n in names
                        },
                        "client_cpu_s_per_1k": _median([r.get("client_cpu_s_per_1k") for r in ok]),
                        "wakeups_per_req": {
                            n: _median([r.get("wakeups_per_req", {}).get(n) for r in ok])
                            for n in names
                        },
                        "rss_mb": {
                            n: _median([r.get("rss_mb", {}).get(n) for r in ok]) for n in names
                        },
                        "foreign_cpu_util": _median([r.get("foreign_cpu_util") for r in ok]),
                        "mean_batch": _median([r.get("mean_batch") for r in ok]),
                        "compute_us_per_row": _median([x.get("server_us_per_row") for x in cmp]),
                        "inprocess_us_per_row": _median(
                            [x.get("inprocess_us_per_row") for x in cmp]
                        ),
                        "compute_vs_inprocess": _median([x.get("ratio") for x in cmp]),
                        "triton_infer_us_per_inference": _median(
                            [
                                (r.get("compute") or {}).get("triton_infer_us_per_inference")
                                for r in ok
                            ]
                        ),
                    }
                )
    return rows


def _find(results: list[dict], system: str, model: str, c: int) -> dict | None:
    for r in results:
        if r.get("system") == system and r.get("model") == model and r.get("concurrency") == c:
            return r
    return None


def _f(x, fmt: str, none: str = "-") -> str:
    return none if x is None else format(x, fmt)


def _per_tier(values: dict, fmt: str, total: bool = True) -> str:
    txt = " · ".join(f"{n} {_f(v, fmt)}" for n, v in values.items())
    if total and len(values) > 1 and all(v is not None for v in values.values()):
        txt += f" (Σ {format(sum(values.values()), fmt)})"
    return txt


def results_table(summary: list[dict], model: str, ref: str = "bare") -> list[str]:
    """The Markdown table of every system measured on ``model``."""
    lines = [
        "| system | conc. | req/s | p50 ms | p90 ms | p99 ms | errors | req/s vs bare "
        "| p50 vs bare | p99 vs bare | CPU s per 1k req (per tier) | wake-ups/req (per tier) "
        "| client CPU s/1k | other CPU | RSS MB | mean batch | compute µs/row | in-process "
        "µs/row, same batches | compute vs in-process |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in summary:
        if r["model"] != model:
            continue
        if not r["rounds"]:
            lines.append(
                f"| {r['system']} | {r['concurrency']} | failed |" + " |" * 16,
            )
            continue
        is_ref = r["system"] == ref
        ratio = "1 (ref)" if is_ref else _f(r["throughput_vs_bare"], ".2f") + "x"
        p50r = (
            "1 (ref)"
            if is_ref
            else (_f(r["p50_vs_bare"], ".2f") + f"x (+{_f(r['p50_minus_bare_ms'], '.2f')} ms)")
        )
        p99r = "1 (ref)" if is_ref else _f(r["p99_vs_bare"], ".2f") + "x"
        other = _f(None if r["foreign_cpu_util"] is None else r["foreign_cpu_util"] * 100, ".0f")
        cvi = r["compute_vs_inprocess"]
        lines.append(
            f"| {r['system']} | {r['concurrency']} | {_f(r['throughput'], ',.0f')} "
            f"| {_f(r['p50_ms'], '.2f')} | {_f(r['p90_ms'], '.2f')} | {_f(r['p99_ms'], '.2f')} "
            f"| {r['errors']} | {ratio} | {p50r} | {p99r} | {_per_tier(r['cpu_s_per_1k'], '.3f')} "
            f"| {_per_tier(r['wakeups_per_req'], '.1f')} "
            f"| {_f(r['client_cpu_s_per_1k'], '.3f')} | {other}% "
            f"| {_per_tier(r['rss_mb'], '.0f', total=False)} "
            f"| {_f(r['mean_batch'], '.2f')} | {_f(r['compute_us_per_row'], '.1f')} "
            f"| {_f(r['inprocess_us_per_row'], '.1f')} "
            f"| {_f(cvi, '.2f') + 'x' if cvi is not None else '-'} |"
        )
    return lines


TABLE_NOTES = [
    "CPU s per 1k req = CPU ms per request (utime+stime over the measured window, each process "
    "with its descendants). wake-ups/req = voluntary context switches per request, per server "
    "process (all threads). RSS MB = resident memory at the end of the window (process tree). "
    "'other CPU' = CPU (% of one core) used during the window by processes this run did not start.",
    "mean batch = rows per executed batch, compute µs/row = the server's own compute time "
    "(`get_inference_statistics`: Σ `batch_stats[b].compute_infer.ns` / rows) over the window; "
    "in-process µs/row = the same batches (same sizes, same counts) timed on the model called "
    "directly (`bench.inprocess`, one torch thread); compute vs in-process = their ratio "
    "(goal ≤ 1.2x).",
]


def batch_size_table(report: dict, model: str, system: str = "ours", top: int = 10) -> list[str]:
    """Per executed batch size (over every concurrency): server vs in-process µs per call."""
    ip = report["inprocess"].get(model) or {}
    agg: dict[int, list[int]] = {}
    infer_ns = inferences = 0
    for rnd in report["rounds"]:
        for r in rnd["results"]:
            if r.get("system") != system or r.get("model") != model or not r.get("compute"):
                continue
            for s, v in r["compute"]["sizes"].items():
                cur = agg.setdefault(int(s), [0, 0])
                cur[0] += v["n"]
                cur[1] += v["ns"]
            t = r["compute"].get("triton_infer_us_per_inference")
            rows = r["compute"].get("rows", 0)
            if t is not None and rows:
                infer_ns += t * 1e3 * rows
                inferences += rows
    if not agg or "batches" not in ip:
        return []
    total_ns = sum(ns for _, ns in agg.values())
    lines = [
        f"Executed batches of `{model}` on {system} (all concurrencies), the {top} sizes with the "
        "most compute time; in-process µs/call marked ~ is interpolated between measured sizes.",
        "",
        "| batch rows | batches | share of compute | server µs/call | in-process µs/call "
        "| server µs/row | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s, (n, ns) in sorted(agg.items(), key=lambda kv: -kv[1][1])[:top]:
        us, interp = inprocess_call_us(ip, s)
        call = ns / n / 1e3
        lines.append(
            f"| {s} | {n:,} | {ns / total_ns * 100:.0f}% | {call:.1f} "
            f"| {'~' if interp else ''}{_f(us, '.1f')} | {call / s:.1f} "
            f"| {_f(None if not us else call / us, '.2f')}x |"
        )
    if inferences:
        lines += [
            "",
            "`inference_stats.compute_infer.ns / inference_count` = "
            f"{infer_ns / inferences / 1e3:.1f} µs: Triton (and our worker) charge every request "
            "its whole batch's compute time, so "
            "this is the mean batch time a request waited on, not a per-row cost; the per-row "
            "figures above come from `batch_stats`.",
        ]
    return lines


def inprocess_section(report: dict, models: list[str]) -> list[str]:
    lines = ["## Models in-process (one torch thread, no serving)", ""]
    from bench.inprocess import to_markdown as ip_md

    for model in models:
        ip = report["inprocess"].get(model) or {}
        lines.append(f"### `{model}`")
        lines.append("")
        if "batches" in ip:
            lines += [
                f"`{Path(ip['model_file']).name}` of `{model}`, width {ip.get('width')}, "
                f"torch {ip['torch']}",
                "",
                ip_md(ip),
                "",
            ]
        else:
            lines += [f"failed: {ip.get('error', 'not run')}", ""]
    return lines


def failures_section(report: dict) -> list[str]:
    failures = [
        (f"{r['system']} {r['model']}", r["concurrency"], e)
        for r in report["summary"]
        for e in r["failed"]
    ]
    for r in report["summary"]:
        if r["errors"]:
            for s in r["error_samples"]:
                failures.append((f"{r['system']} {r['model']}", r["concurrency"], f"sample: {s}"))
    failures += [
        (f"{res['system']} {res.get('model', '')}".strip(), "-", res["error"])
        for rnd in report["rounds"]
        for res in rnd["results"]
        if "error" in res and "concurrency" not in res
    ]
    if report.get("repo_error"):
        failures.append(("repo", "-", report["repo_error"]))
    for rnd in report["rounds"]:
        for name, info in rnd.get("info", {}).items():
            if info.get("sanity_error"):
                failures.append((name, "sanity", info["sanity_error"]))
    for note in report.get("notes", []):
        failures.append(note)
    if not failures:
        return []
    lines = ["## Failures and notes", ""]
    for system, c, err in failures:
        lines.append(f"- **{system} c={c}**: " + str(err).strip().replace("\n", "\n  "))
    return [*lines, ""]


def idle_line(report: dict) -> str | None:
    idle: dict[str, list[float]] = {}
    rss: dict[str, list[float]] = {}
    for rnd in report["rounds"]:
        samples = [(r.get("system"), r) for r in rnd["results"] if "idle_cpu_util" in r]
        samples += list(rnd.get("info", {}).items())
        for system, sample in samples:
            for name, util in (sample.get("idle_cpu_util") or {}).items():
                idle.setdefault(f"{system} {name}", []).append(util)
            for name, mb in (sample.get("idle_rss_mb") or {}).items():
                rss.setdefault(f"{system} {name}", []).append(mb)
    if not idle:
        return None
    return (
        "Idle (up, nothing sent; median over rounds): CPU % of one core "
        + ", ".join(f"{n} {_median(v) * 100:.1f}%" for n, v in idle.items())
        + "; RSS MB "
        + ", ".join(f"{n} {_median(v):.0f}" for n, v in rss.items())
        + "."
    )


def git_text(meta: dict) -> str:
    dirty = meta.get("git_dirty") or []
    if not dirty:
        return f"git {meta['git']}"
    shown = ", ".join(f"`{f}`" for f in dirty[:6]) + (" ..." if len(dirty) > 6 else "")
    return f"git {meta['git']} plus uncommitted changes to {shown}"


def meta_line(meta: dict) -> str:
    return (
        f"Run {meta['timestamp']} (UTC), {git_text(meta)}, {meta['cpus']} CPUs, "
        f"{meta['rounds']} round(s) x {meta['duration_s']:g} s measured after "
        f"{meta['warmup_s']:g} s warm-up per point, {meta['client_processes']} load generator "
        f"processes (tritonclient.grpc.aio, closed loop, one FP32 [1, width] request per call), "
        f"{meta.get('elapsed_s', 0):.0f} s in all. Medians over rounds; ratios are against "
        "baselines measured in the same round."
    )


def to_markdown(report: dict) -> str:
    meta = report["meta"]
    models = meta["models"]
    lines = [
        "## Our stack against the bare gRPC server (`make bench`)",
        "",
        meta_line(meta),
        "",
    ]
    for model in models:
        lines += [f"### `{model}`: {MODEL_BLURB.get(model, '')}", ""]
        lines += results_table(report["summary"], model)
        lines.append("")
        bs = batch_size_table(report, model)
        if bs:
            lines += [*bs, ""]
    if meta.get("plot"):
        lines += [f"![throughput against p99 latency]({meta['plot']})", ""]
    lines += TABLE_NOTES
    idle = idle_line(report)
    if idle:
        lines.append(idle)
    lines.append("")
    lines += failures_section(report)
    lines += inprocess_section(report, models)
    return "\n".join(lines) + "\n"


MODEL_BLURB = {
    "mlp": "FP32 Linear(256,256)-ReLU-Linear(256,256), the demo model (serving-bound)",
    "wide_mlp": "FP32 Linear(1024,4096)-ReLU-Linear(4096,1024), seed 0 (compute-bound)",
}


# --------------------------------------------------------------------------- main
def git_sha() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or "?"
        )
    except Exception:
        return "?"


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


def new_meta(args: argparse.Namespace, stamp: str, log_dir: Path) -> dict:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, duration=8.0, warmup=2.0)
    parser.add_argument(
        "--quick", action="store_true", help="short run: c=1,64, mlp only, 4 s per point"
    )
    parser.add_argument("--models", default=None, help=f"comma-separated ({DEFAULT_MODELS})")
    parser.add_argument(
        "--inprocess-seconds", type=float, default=0.3, help="timed seconds per batch size"
    )
    parser.add_argument("--skip-ours", action="store_true", help="baselines only")
    args = parser.parse_args(argv)
    quick = args.quick
    args.duration = args.duration if args.duration is not None else (4.0 if quick else 8.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if quick else 2.0)
    conc = args.concurrency or (QUICK_CONCURRENCY if quick else DEFAULT_CONCURRENCY)
    args.concurrency = [int(c) for c in conc.split(",") if c.strip()]
    models = [m for m in (args.models or ("mlp" if quick else DEFAULT_MODELS)).split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {list(MODELS)}")
    if quick:
        args.idle_seconds = min(args.idle_seconds, 1.0)

    t_begin = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    log_dir = args.out / "logs" / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "meta": {**new_meta(args, stamp, log_dir), "models": models, "quick": quick},
        "rounds": [],
        "inprocess": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-repo-") as tmp:
        repo: Path | None = Path(tmp) / "models"
        err = build_repo(repo, log_dir, models)
        if err:
            report["repo_error"] = err
            print(f"bench: cannot build the model repository; our stack is skipped\n{err}")
            repo = None
        for rnd in range(args.rounds):
            report["rounds"].append(run_round(args, log_dir, rnd, repo, models))
        all_results = [r for rnd in report["rounds"] for r in rnd["results"]]
        for model in models:
            sizes = inprocess_sizes(all_results, model)
            print(f"bench: {model} in-process at batch sizes {sizes}", file=sys.stderr)
            report["inprocess"][model] = run_inprocess(repo, model, sizes, args.inprocess_seconds)
    attach_inprocess(report)
    report["summary"] = summarize(report["rounds"], args.concurrency, ["bare", "ours"], models)
    report["meta"]["elapsed_s"] = time.monotonic() - t_begin
    return write_outputs(report, args, "run", to_markdown)


def write_outputs(report: dict, args: argparse.Namespace, kind: str, render) -> int:
    """``<kind>-<stamp>.json``, ``<kind>-latest.png`` and ``.md``, then ``latest.md``."""
    from bench import report as report_mod

    stamp = report["meta"]["timestamp"]
    json_path = args.out / f"{kind}-{stamp}.json"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if not args.no_plot:
        png = args.out / f"{kind}-latest.png"
        err = report_mod.plot(json_path, png)
        if err:
            report.setdefault("notes", []).append(("plot", "-", err))
        else:
            report["meta"]["plot"] = png.name
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md = render(report)
    (args.out / f"{kind}-latest.md").write_text(md)
    report_mod.write_latest(args.out)
    print(md)
    print(f"bench: wrote {json_path} and {args.out / 'latest.md'}", file=sys.stderr)
    failed = any(r["failed"] or not r["rounds"] for r in report["summary"])
    return 1 if failed or report.get("repo_error") else 0


if __name__ == "__main__":
    sys.exit(main())

"""Peers (``make bench-peers``): the same model on PyTriton and Ray Serve, same load, same run.

Every round measures the ``mlp`` demo model (FP32 Linear(256,256)-ReLU-
Linear(256,256), seed 0, one torch thread, max batch 64, 500 µs queue delay) served by:

1. ``bare``: the bare grpc.aio server (``bench.bare_server``), the ceiling of Python gRPC;
2. ``ours``: broker + worker + frontend, as in ``bench.run``;
3. ``pytriton``: PyTriton (a real Triton server with a Python model, ``bench/pytriton_server.py``);
4. ``ray``: Ray Serve's gRPC proxy with the KServe v2 service and ``@serve.batch``
   (``bench/ray_server.py``);

each at the same concurrencies with the same closed-loop load generator (``bench.loadgen``), then
the model in-process at the batch sizes executed (see ``bench.run``). The first three are up at
once and measured point by point, back to back in alternating order, so that ratios compare
measurements seconds apart; Ray, which uses ~10 % of a core while idle, runs on its own after them.

The peers run in their own virtualenv, ``bench/.venv-peers``, made here on first use:
``torch==2.13.0`` (pinned: an unpinned torch downloads GBs of CUDA wheels),
``nvidia-pytriton==0.7.0``, ``matplotlib`` and, when it installs in time, ``ray[serve]==2.60.0``.
PyTriton's Triton stub links the system libpython, so it starts with ``LD_LIBRARY_PATH`` set to the
interpreter's LIBDIR; all its endpoints bind 127.0.0.1, its statistics stay token-protected (the
token is sent as a header).

Ray always uses the machine's non-loopback address for its own services (it replaces 127.0.0.1
on purpose), so the measurement runs inside a private network namespace holding only a loopback
interface (``unshare -n``) where Ray falls back to 127.0.0.1; every system is measured in that
namespace so they stay comparable. Where no namespace can be made, Ray is skipped with a note.

Writes ``<out>/peers-<stamp>.json``, ``<out>/peers-latest.md``, ``<out>/peers-latest.png`` and
regenerates ``<out>/latest.md``.

    python -m bench.peers [--concurrency 1,8,32,128] [--duration 8]
                          [--systems bare,ours,pytriton,ray] [--no-install] [--no-netns]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import run as R
from bench.report import BENCH_DIR, PEERS_VENV, REPO_ROOT

MODEL = "mlp"
SYSTEMS = ("bare", "ours", "pytriton", "ray")
PEERS_PY = PEERS_VENV / "bin" / "python"
BASE_SPECS = ["torch==2.13.0", "nvidia-pytriton==0.7.0", "matplotlib"]
RAY_SPEC = "ray[serve]==2.60.0"
BASE_MARKER = PEERS_VENV / ".bench-base-installed"
RAY_MARKER = PEERS_VENV / ".bench-ray-installed"
HOOK_PTH = "bench_ray_loopback.pth"
HOOK_ENV = "BENCH_RAY_LOOPBACK_HOOK"
NETNS_ENV = "BENCH_PEERS_NETNS"
PEER_READY_TIMEOUT_S = 240.0


# --------------------------------------------------------------------------- the peers venv
def _pip(specs: list[str], timeout: float) -> tuple[bool, str]:
    t0 = time.monotonic()
    try:
        r = subprocess.run(
            [str(PEERS_PY), "-m", "pip", "install", "-q", *specs],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False, f"`pip install {' '.join(specs)}` did not finish in {timeout:.0f} s"
    took = time.monotonic() - t0
    if r.returncode != 0:
        err = "\n".join(ln for ln in r.stderr.splitlines() if "is ignored" not in ln)[-1500:]
        return False, f"`pip install {' '.join(specs)}` failed after {took:.0f} s:\n{err}"
    return True, f"installed {' '.join(specs)} in {took:.0f} s"


def ensure_venv(ray: bool, install: bool, ray_timeout: float) -> dict:
    """Make ``bench/.venv-peers`` (base packages, then Ray if asked); what happened, per part."""
    status: dict = {"venv": str(PEERS_VENV), "notes": []}
    if not PEERS_PY.exists():
        if not install:
            status["base_error"] = f"{PEERS_VENV} does not exist (run without --no-install)"
            return status
        r = subprocess.run(
            [sys.executable, "-m", "venv", str(PEERS_VENV)], capture_output=True, text=True
        )
        if r.returncode != 0:
            status["base_error"] = f"python -m venv failed: {r.stderr[-800:]}"
            return status
    if not BASE_MARKER.exists():
        if not install:
            status["base_error"] = "peer packages not installed (run without --no-install)"
            return status
        ok, msg = _pip(BASE_SPECS, timeout=1200)
        status["notes"].append(msg)
        if not ok:
            status["base_error"] = msg
            return status
        BASE_MARKER.write_text(" ".join(BASE_SPECS) + "\n")
    if ray:
        if not RAY_MARKER.exists():
            if install:
                ok, msg = _pip([RAY_SPEC], timeout=ray_timeout)
                status["notes"].append(msg)
                if ok:
                    RAY_MARKER.write_text(RAY_SPEC + "\n")
                else:
                    status["ray_error"] = msg + " (skipped: Ray Serve must install quickly)"
            else:
                status["ray_error"] = "Ray Serve not installed (run without --no-install)"
        if RAY_MARKER.exists():
            _install_hook()
    status["versions"] = _versions()
    return status


def _install_hook() -> None:
    """The .pth that runs ``bench/ray_loopback.py`` in every peers-venv process when asked to."""
    site = subprocess.run(
        [str(PEERS_PY), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    line = (
        f"import os, runpy; os.environ.get({HOOK_ENV!r}) and "
        f"runpy.run_path(os.environ[{HOOK_ENV!r}])\n"
    )
    (Path(site) / HOOK_PTH).write_text(line)


def _versions() -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json\n"
        "out = {}\n"
        "for p in ('torch', 'nvidia-pytriton', 'tritonclient', 'ray', 'matplotlib'):\n"
        "    try:\n"
        "        out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError:\n"
        "        pass\n"
        "print(json.dumps(out))\n"
    )
    r = subprocess.run([str(PEERS_PY), "-c", code], capture_output=True, text=True)
    try:
        return json.loads(r.stdout)
    except json.JSONDecodeError:
        return {}


def peers_libdir() -> str:
    return subprocess.run(
        [str(PEERS_PY), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


# --------------------------------------------------------------------------- systems
def peer_argv(script: str, repo: Path, grpc_port: int, http_port: int, *extra: str) -> list[str]:
    """The command line of a peer server script (the options ``bench/peer_args.py`` defines)."""
    return [
        str(PEERS_PY),
        str(BENCH_DIR / script),
        "--model-file",
        str(repo / MODEL / "1" / "model.pt"),
        "--model",
        MODEL,
        "--width",
        str(R.MODELS[MODEL]),
        "--grpc-port",
        str(grpc_port),
        "--http-port",
        str(http_port),
        *extra,
    ]


def start_pytriton(args, log_dir: Path, rnd: int, repo: Path, tmp: Path) -> tuple[R.Target, dict]:
    """PyTriton serving ``MODEL``, ready and idle-measured; its workspace goes with its procs."""
    grpc_port, http_port = R.free_port(), R.free_port()
    url = f"127.0.0.1:{grpc_port}"
    token = os.urandom(16).hex()
    token_file = tmp / f"pytriton-token-{rnd}"
    token_file.write_text(token)
    workspace = tmp / f"pytriton-ws-{rnd}"
    info: dict = {"workspace": str(workspace)}
    headers = {"triton-grpc-protocol-triton-access-token": token}
    proc = R.Proc(
        "server",
        peer_argv(
            "pytriton_server.py",
            repo,
            grpc_port,
            http_port,
            "--token-file",
            str(token_file),
            "--workspace",
            str(workspace),
        ),
        log_dir / f"r{rnd}-pytriton",
        env={
            "LD_LIBRARY_PATH": peers_libdir(),
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        },
        cwd=str(REPO_ROOT),
        grace_s=15.0,
    )
    try:
        t0 = time.monotonic()
        R.wait_ready(url, [proc], [MODEL], timeout=PEER_READY_TIMEOUT_S)
        info["ready_s"] = time.monotonic() - t0
        info["sanity_error"] = R.sanity_check(url, MODEL)
        info["statistics"] = R.batch_snapshot(url, MODEL, headers) is not None
        target = R.Target("pytriton", url, [proc], stats=info["statistics"], stats_headers=headers)
        time.sleep(1.0)
        info["idle_cpu_util"] = R.idle_cpu(target.procs, args.idle_seconds)
        info["idle_rss_mb"] = R.idle_rss(target.procs)
    except BaseException:
        stop_pytriton([proc], info)
        raise
    return target, info


def stop_pytriton(procs: list[R.Proc], info: dict) -> None:
    info["exit_codes"] = R.stop_all(procs)
    shutil.rmtree(info["workspace"], ignore_errors=True)


def run_interleaved(
    args, log_dir: Path, rnd: int, repo: Path, tmp: Path, systems: list[str], entry: dict
) -> None:
    """Bare, ours and PyTriton, all up at once, measured point by point
    (``R.sweep_interleaved``). Ray stays out: it uses ~10 % of a core while idle."""
    out: list[dict] = entry["results"]
    up: dict[str, R.Target] = {}
    pt_info: dict | None = None
    try:
        for system in ("bare", "ours", "pytriton"):
            if system not in systems:
                continue
            print(f"bench.peers: round {rnd + 1}/{args.rounds}: starting {system}", file=sys.stderr)
            try:
                if system == "bare":
                    up[system] = R.start_bare(args, log_dir, rnd, MODEL)
                elif system == "ours":
                    up[system], entry["info"]["ours"] = R.start_ours_idle(
                        args, log_dir, rnd, repo, [MODEL]
                    )
                else:
                    up[system], pt_info = start_pytriton(args, log_dir, rnd, repo, tmp)
                    entry["info"]["pytriton"] = pt_info
            except R.StackError as exc:
                out.append({"system": system, "model": MODEL, "error": str(exc)})
        out += R.sweep_interleaved({MODEL: list(up.values())}, args, rnd)
        if "bare" in up:
            out.append(R.bare_idle(up["bare"], MODEL, args))
    finally:
        for system, target in up.items():
            if system == "pytriton" and pt_info is not None:
                stop_pytriton(target.procs, pt_info)
            elif system == "ours":
                entry["info"]["ours"]["exit_codes"] = R.stop_all(target.procs)
            else:
                R.stop_all(target.procs)


def run_ray(args, log_dir: Path, rnd: int, repo: Path) -> tuple[list, dict]:
    grpc_port, http_port = R.free_port(), R.free_port()
    url = f"127.0.0.1:{grpc_port}"
    headers = {"application": MODEL}  # Ray Serve's gRPC proxy routes by this metadata key
    procs: list[R.Proc] = []
    out: list[dict] = []
    info: dict = {}
    try:
        procs.append(
            R.Proc(
                "server",
                peer_argv("ray_server.py", repo, grpc_port, http_port),
                log_dir / f"r{rnd}-ray",
                env={
                    HOOK_ENV: str(BENCH_DIR / "ray_loopback.py"),
                    "RAY_USAGE_STATS_ENABLED": "0",
                    "OMP_NUM_THREADS": "1",
                    "MKL_NUM_THREADS": "1",
                },
                cwd=str(REPO_ROOT),
                grace_s=20.0,
            )
        )
        t0 = time.monotonic()
        R.wait_ready(url, procs, [MODEL], timeout=PEER_READY_TIMEOUT_S, headers=headers)
        info["ready_s"] = time.monotonic() - t0
        info["sanity_error"] = R.sanity_check(url, MODEL, headers)
        target = R.Target("ray", url, procs, infer_headers=headers)
        time.sleep(1.0)
        info["idle_cpu_util"] = R.idle_cpu(procs, args.idle_seconds)
        info["idle_rss_mb"] = R.idle_rss(procs)
        out += R.sweep(target, [MODEL], args)
    except R.StackError as exc:
        out.append({"system": "ray", "model": MODEL, "error": str(exc)})
    finally:
        info["exit_codes"] = R.stop_all(procs)
    return out, info


# --------------------------------------------------------------------------- report
def versus_table(
    rounds: list[dict], summary: list[dict], concurrencies: list[int], systems: list[str]
) -> list[str]:
    """Our stack against each peer at each concurrency: every ratio (and the p50 difference) is
    taken within a round first, then the median over rounds is shown."""

    def within(other: str, c: int, value) -> float | None:
        per_round = []
        for rnd in rounds:
            mine = R._find(rnd["results"], "ours", MODEL, c)
            theirs = R._find(rnd["results"], other, MODEL, c)
            if mine and theirs and "error" not in mine and "error" not in theirs:
                v = value(mine, theirs)
                if v is not None:
                    per_round.append(v)
        return R._median(per_round)

    def ratio(key: str):
        return lambda a, b: a[key] / b[key] if a.get(key) and b.get(key) else None

    peers = [s for s in systems if s not in ("ours",)]
    head = "| conc. | ours req/s | " + " | ".join(
        f"ours ÷ {p} req/s | ours ÷ {p} p99" for p in peers
    )
    lines = [
        head + " | ours p50 minus bare p50 |",
        "|---:|---:|" + "---:|---:|" * len(peers) + "---:|",
    ]
    for c in concurrencies:
        ours = next(
            (r for r in summary if r["system"] == "ours" and r["concurrency"] == c and r["rounds"]),
            None,
        )
        if ours is None:
            continue
        cells = [str(c), R._f(ours["throughput"], ",.0f")]
        for p in peers:
            for key in ("throughput", "p99_ms"):
                x = within(p, c, ratio(key))
                cells.append("-" if x is None else f"{x:.2f}x")
        diff = within(
            "bare",
            c,
            lambda a, b: (
                a["p50_ms"] - b["p50_ms"]
                if a.get("p50_ms") is not None and b.get("p50_ms") is not None
                else None
            ),
        )
        cells.append(R._f(diff, "+.2f") + (" ms" if diff is not None else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def to_markdown(report: dict) -> str:
    meta = report["meta"]
    systems = meta["systems"]
    inst = report.get("install", {})
    versions = inst.get("versions", {})
    lines = [
        "## Peers: the same model on PyTriton and Ray Serve (`make bench-peers`)",
        "",
        R.meta_line(meta),
        "",
        f"Model `{MODEL}`: {R.MODEL_BLURB[MODEL]}; max batch 64, 500 µs queue delay, one torch "
        "thread, everywhere. Peers from `bench/.venv-peers`: "
        + (", ".join(f"{k} {v}" for k, v in versions.items()) or "not installed")
        + ". PyTriton = Triton server + Python backend stub + the PyTriton process running the "
        "model; Ray Serve = gRPC proxy actor + one replica (`@serve.batch`). 'CPU s per 1k' of a "
        "peer counts all its processes (`server` = the whole process tree). PyTriton's "
        "`compute_infer` is timed by Triton's Python backend around its round trip to the "
        "PyTriton process, so its 'compute' includes that hop; Ray reports no statistics. "
        + (
            "Measured inside a private network namespace with only a loopback interface "
            "(`unshare -n`), every system alike."
            if meta.get("netns")
            else "Measured in the machine's own network namespace."
        ),
        "",
        *R.results_table(report["summary"], MODEL),
        "",
        "Our stack against each system: ratios within each round, median over rounds (targets at "
        "c=64 in PEERS.md: ≥ 0.6x bare, "
        "≥ 1.5x PyTriton with lower p99; c=1 p50 within 1.5 ms of bare):",
        "",
        *versus_table(report["rounds"], report["summary"], meta["concurrency"], systems),
        "",
    ]
    bs = R.batch_size_table(report, MODEL)
    if bs:
        lines += [*bs, ""]
    if meta.get("plot"):
        lines += [f"![throughput against p99 latency]({meta['plot']})", ""]
    lines += R.TABLE_NOTES
    idle = R.idle_line(report)
    if idle:
        lines.append(idle)
    lines.append("")
    lines += R.failures_section(report)
    lines += R.inprocess_section(report, [MODEL])
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main
def _in_private_netns() -> bool:
    return os.environ.get(NETNS_ENV) == "1"


def _reexec_in_netns(argv: list[str], status_file: Path) -> int | None:
    """Run this module again inside ``unshare -n`` (loopback only); None if that is impossible."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        return None
    inner = [sys.executable, "-m", "bench.peers", *argv, "--install-status", str(status_file)]
    script = "ip link set lo up && exec " + " ".join(_quote(a) for a in inner)
    env = {**os.environ, NETNS_ENV: "1"}
    return subprocess.run(["unshare", "-n", "sh", "-c", script], env=env, cwd=REPO_ROOT).returncode


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    R.add_common_args(parser, duration=8.0, warmup=2.0)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated")
    parser.add_argument(
        "--inprocess-seconds", type=float, default=0.3, help="timed seconds per batch size"
    )
    parser.add_argument("--no-install", action="store_true", help="never pip install")
    parser.add_argument("--no-netns", action="store_true", help="no private network namespace")
    parser.add_argument("--ray-install-timeout", type=float, default=300.0)
    parser.add_argument("--install-status", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.duration = 8.0 if args.duration is None else args.duration
    args.warmup = 2.0 if args.warmup is None else args.warmup
    args.concurrency = [
        int(c) for c in (args.concurrency or R.DEFAULT_CONCURRENCY).split(",") if c.strip()
    ]
    systems = [s for s in args.systems.split(",") if s]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown system(s) {unknown}; known: {list(SYSTEMS)}")
    want_peers = any(s in systems for s in ("pytriton", "ray"))

    # Install first, outside any namespace (pip needs the package index).
    if args.install_status is not None:
        install = json.loads(args.install_status.read_text())
    elif want_peers:
        print("bench.peers: preparing bench/.venv-peers", file=sys.stderr)
        install = ensure_venv("ray" in systems, not args.no_install, args.ray_install_timeout)
    else:
        install = {"notes": []}
    notes: list[tuple[str, str, str]] = [("install", "-", n) for n in install.get("notes", [])]
    if install.get("base_error"):
        notes.append(("pytriton", "-", f"skipped: {install['base_error']}"))
        systems = [s for s in systems if s not in ("pytriton", "ray")]
    if "ray" in systems and install.get("ray_error"):
        notes.append(("ray", "-", install["ray_error"]))
        systems.remove("ray")

    if "ray" in systems and not _in_private_netns():
        if not args.no_netns:
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                json.dump(install, f)
            try:
                rc = _reexec_in_netns(argv, Path(f.name))
            finally:
                os.unlink(f.name)
            if rc is not None:
                return rc
        notes.append(
            (
                "ray",
                "-",
                "skipped: Ray's own services always use the machine's non-loopback address "
                "(ray.init replaces 127.0.0.1), and no private network namespace could be made "
                "(`unshare -n`), so it would send traffic beyond loopback",
            )
        )
        systems.remove("ray")

    t_begin = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    log_dir = args.out / "logs" / f"peers-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "meta": {
            **R.new_meta(args, stamp, log_dir),
            "models": [MODEL],
            "systems": systems,
            "netns": _in_private_netns(),
        },
        "install": install,
        "rounds": [],
        "inprocess": {},
        "notes": notes,
    }
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp_s:
        tmp = Path(tmp_s)
        repo = tmp / "models"
        err = R.build_repo(repo, log_dir, [MODEL])
        if err:
            report["repo_error"] = err
            systems = [s for s in systems if s == "bare"]
        for rnd in range(args.rounds):
            entry: dict = {"round": rnd, "results": [], "info": {}}
            run_interleaved(args, log_dir, rnd, repo, tmp, systems, entry)
            if "ray" in systems:
                print(f"bench.peers: round {rnd + 1}/{args.rounds}: ray", file=sys.stderr)
                res, info = run_ray(args, log_dir, rnd, repo)
                entry["results"] += res
                entry["info"]["ray"] = info
            report["rounds"].append(entry)
        results = [r for rnd in report["rounds"] for r in rnd["results"]]
        sizes = R.inprocess_sizes(results, MODEL)
        print(f"bench.peers: {MODEL} in-process at batch sizes {sizes}", file=sys.stderr)
        report["inprocess"][MODEL] = R.run_inprocess(
            None if err else repo, MODEL, sizes, args.inprocess_seconds
        )
    R.attach_inprocess(report)
    report["meta"]["systems"] = systems
    report["summary"] = R.summarize(report["rounds"], args.concurrency, systems, [MODEL])
    report["meta"]["elapsed_s"] = time.monotonic() - t_begin
    return R.write_outputs(report, args, "peers", to_markdown)


if __name__ == "__main__":
    sys.exit(main())

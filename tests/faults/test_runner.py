"""``make run``'s runner (scripts/run_local.py) as users start it, with real tiers.

* A SIGKILLed worker under closed-loop load costs no call, is restarted and serves again; then
  SIGTERM to the runner, still under load, stops the runner and every child within a bound.
* Two frontends share the gRPC port and both answer; the repository given with ``--models``
  stays byte-identical; SIGKILL to the runner takes every child with it (PR_SET_PDEATHSIG).
* A port in use is refused before anything starts, in one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.faults.harness import OK, Call, ClosedLoop, between, failures
from tests.faults.models import write_work
from tests.integration.stack import (
    HEARTBEAT_INTERVAL_S,
    HEARTBEAT_LIVENESS,
    REPO_ROOT,
    STARTUP_TIMEOUT_S,
    free_port,
    tail,
    wait_for,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

DETECT_S = HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS
CALL_TIMEOUT_S = 10.0
STOP_BOUND_S = 30.0
"""SIGTERM to gone, under load: frontends drain <= 5 s, workers <= 10 s, brokers <= 5 s, plus
interpreter exits on two busy cores. The runner's own SIGKILL bound is 3 x 15 s grace."""
PDEATHSIG_BOUND_S = 5.0
STARTED = re.compile(r"^\[run\] started (\S+) pid (\d+)$", re.M)


class Runner:
    """One ``scripts/run_local.py`` process on free ports, its output in a log file."""

    def __init__(self, log_path: Path, repo: Path, *args: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        fast = f"--heartbeat-interval-s={HEARTBEAT_INTERVAL_S}"
        argv = [
            sys.executable, "scripts/run_local.py",
            "--models", str(repo), "--port", str(self.port),
            "--broker-frontend-port", str(free_port()), "--broker-worker-port", str(free_port()),
            "--metrics-port", "0",
            f"--worker-arg={fast}", "--worker-arg=--device=cpu",
            f"--broker-arg={fast}", f"--broker-arg=--heartbeat-liveness={HEARTBEAT_LIVENESS}",
            f"--frontend-arg={fast}", *args,
        ]  # fmt: skip
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        self.log = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        self.popen = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pids(self) -> dict[str, int]:
        """The latest pid of every child, by name."""
        return {name: int(pid) for name, pid in STARTED.findall(self.text())}

    def every_pid(self) -> set[int]:
        return {int(pid) for _, pid in STARTED.findall(self.text())}

    def wait_ready(self, models: list[str]) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        try:
            for model in models:
                wait_for(
                    lambda m=model: client.is_model_ready(m, client_timeout=1.0),  # type: ignore[misc]
                    timeout_s=STARTUP_TIMEOUT_S,
                    what=f"ModelReady({model}) through the runner on {self.url}",
                )
        finally:
            client.close()

    def close(self) -> None:
        for pid in [self.popen.pid, *self.every_pid()]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        self.log.close()


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (children of the runner are reaped by
    init once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.fixture
def runners(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[Runner]]:
    made: list[Runner] = []
    yield made
    failed = getattr(request.node, "rep_call", None)
    for runner in made:
        runner.close()
        if failed is not None and failed.failed:
            print(f"----- runner log {runner.log_path}\n{tail(runner.log_path, 80)}")


@pytest.fixture
def work_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    write_work(repo, "work")
    return repo


@pytest.mark.timeout(240)
def test_killed_worker_is_restarted_without_failed_calls_then_sigterm_stops_all(
    tmp_path: Path, work_repo: Path, runners: list[Runner]
) -> None:
    runner = Runner(tmp_path / "runner.log", work_repo, "--workers", "2")
    runners.append(runner)
    runner.wait_ready(["work"])
    first = runner.pids()
    workers = {first["worker-0"], first["worker-1"]}
    load = ClosedLoop(runner.url, "work", concurrency=32, timeout_s=CALL_TIMEOUT_S)
    load.start()
    stopped_at = 0.0
    try:
        load.wait_until(
            lambda calls: workers <= {c.pid for c in calls if c.status == OK},
            timeout_s=60,
            what="both workers answering",
        )
        killed_at = time.monotonic()
        os.kill(first["worker-1"], signal.SIGKILL)
        wait_for(
            lambda: runner.pids()["worker-1"] != first["worker-1"],
            timeout_s=30,
            what="worker-1 restarted",
        )
        reborn = runner.pids()["worker-1"]
        load.wait_until(
            lambda calls: any(c.pid == reborn for c in calls),
            timeout_s=STARTUP_TIMEOUT_S,
            what=f"the restarted worker-1 (pid {reborn}) answering",
        )
        after_kill = between(load.calls, killed_at)
        assert len(after_kill) > 100, len(after_kill)
        assert failures(list(load.calls)) == [], runner.text()[-4000:]
        children = runner.every_pid()
        stopped_at = time.monotonic()
        os.kill(runner.popen.pid, signal.SIGTERM)
        code = runner.popen.wait(STOP_BOUND_S)
        stop_s = time.monotonic() - stopped_at
    finally:
        calls: list[Call] = load.stop()
    assert code == 0
    assert "[run] worker-1 exited with -9; restart 1 in 0.5s" in runner.text()
    assert "[run] [shutdown] all stopped" in runner.text()
    assert [pid for pid in children if alive(pid)] == []
    before_stop = [c for c in calls if c.ended_s < stopped_at]
    assert failures(before_stop) == []
    print(f"runner stop under load took {stop_s:.1f}s; {len(calls)} calls")


@pytest.mark.timeout(240)
def test_two_frontends_share_the_port_repository_untouched_sigkill_takes_children(
    tmp_path: Path, work_repo: Path, runners: list[Runner]
) -> None:
    before = tree_digest(work_repo)
    runner = Runner(tmp_path / "runner.log", work_repo, "--frontends", "2")
    runners.append(runner)
    runner.wait_ready(["work"])
    pids = runner.pids()
    frontends = {pids["frontend-0"], pids["frontend-1"]}
    served_by: set[int] = set()
    clients = []
    try:
        deadline = time.monotonic() + 60
        while served_by != frontends and time.monotonic() < deadline:
            # A channel of its own (gRPC shares connections between equal channels otherwise),
            # so each client is a new TCP connection that the kernel gives to either frontend.
            client = grpcclient.InferenceServerClient(
                runner.url, channel_args=[("grpc.use_local_subchannel_pool", 1)]
            )
            clients.append(client)
            x = np.arange(16, dtype=np.int32).reshape(1, 16)
            inp = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
            inp.set_data_from_numpy(x)
            out = client.infer("work", [inp]).as_numpy("OUTPUT0")
            np.testing.assert_array_equal(out, x * 2 + 1)
            served_by |= frontends & connection_owners(runner.port)
    finally:
        for client in clients:
            client.close()
    assert served_by == frontends, f"answered only through {served_by} of {frontends}"
    children = runner.every_pid()
    os.kill(runner.popen.pid, signal.SIGKILL)
    runner.popen.wait(10)
    wait_for(
        lambda: not any(alive(pid) for pid in children),
        timeout_s=PDEATHSIG_BOUND_S,
        what="every child gone after SIGKILL to the runner",
    )
    assert tree_digest(work_repo) == before


def test_port_in_use_is_one_line_and_nothing_starts(
    tmp_path: Path, work_repo: Path, runners: list[Runner]
) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        runner = Runner(tmp_path / "runner.log", work_repo, "--port", str(port))
        runners.append(runner)
        code = runner.popen.wait(60)
    text = runner.text()
    assert code == 2
    assert text.splitlines() == [
        f"run: port {port} (frontend-0 gRPC, 127.0.0.1) is already in use; stop what holds "
        "it or choose another port"
    ]


def tree_digest(root: Path) -> dict[str, str]:
    """Every file and directory under ``root`` with its content hash."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


def connection_owners(port: int) -> set[int]:
    """Pids holding an established TCP connection whose local port is ``port``."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01":  # ESTABLISHED
                    inodes.add(fields[9])
    owners: set[int] = set()
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (pid_dir / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    owners.add(int(pid_dir.name))
                    break
    return owners

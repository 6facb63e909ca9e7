"""Real broker, worker and frontend processes on free ports, started the way users start them.

A ``Stack`` owns its processes: each writes stdout and stderr to its own log file, readiness is
waited for through the public gRPC API (never with bare sleeps), and ``stop`` sends SIGTERM, then
SIGKILL after a grace period. ``tail_logs`` gives the last lines of every log for failure reports.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

import tritonclient.grpc as grpcclient

from bench.lifecycle import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

HEARTBEAT_INTERVAL_S = 0.2
HEARTBEAT_LIVENESS = 5
STARTUP_TIMEOUT_S = 90.0
"""A worker imports torch and loads TorchScript; on two busy cores that can take a while."""
STOP_GRACE_S = 5.0
POLL_INTERVAL_S = 0.05
LOG_TAIL_LINES = 40

DEMO_MODELS = (
    "simple",
    "simple_string",
    "mlp",
    "mlp_wait",
    "simple_sequence",
    "simple_dyna_sequence",
    "repeat_int32",
    "simple_int8",
    "simple_identity",
    "simple_classifier",
    "identity_fp32",
)
TEST_MODELS = ("faulty", "sleepy", "sleepy_pair", "echo", "trickle")
"""Written next to the demo models by the ``model_repo`` fixture (see conftest)."""
ALL_MODELS = DEMO_MODELS + TEST_MODELS
SMALL_MAX_MESSAGE_BYTES = 64 * 1024
"""``--max-message-bytes`` of the shared stack's second frontend."""

T = TypeVar("T")
S = TypeVar("S", bound="Stack")


PORT_TAKEN = "Address already in use"
PORT_ATTEMPTS = 3


def _popen(argv: Sequence[str], log_file: IO[bytes]) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # The system must not depend on the test runner's path tweaks.
    env.pop("PYTHONPATH", None)
    return subprocess.Popen(
        argv,
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def build_demo_repo(out: Path) -> None:
    """``python -m worker.demo_models out``, as ``make run`` builds the demo repository."""
    result = subprocess.run(
        [PYTHON, "-m", "worker.demo_models", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, (
        f"worker.demo_models failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    )


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Proc:
    """One started process and its log."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    args: Sequence[str]
    port: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        assert self.port is not None, f"{self.name} has no gRPC port"
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return tail(self.log_path, lines)

    def describe_exit(self) -> str:
        return (
            f"{self.name} (pid {self.pid}) exited with code {self.popen.returncode}; "
            f"last log lines:\n{self.tail()}"
        )


class ProcessDied(AssertionError):
    pass


def wait_for(
    predicate: Callable[[], T],
    *,
    timeout_s: float,
    what: str,
    watch: Iterable[Proc] = (),
    interval_s: float = POLL_INTERVAL_S,
) -> T:
    """Poll ``predicate`` until it returns something truthy; exceptions count as not yet.

    Fails at once when a watched process exits, and with the last error seen on timeout.
    """
    watched = list(watch)
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        for proc in watched:
            if not proc.alive():
                raise ProcessDied(f"while waiting for {what}: {proc.describe_exit()}")
        try:
            value = predicate()
        except Exception as exc:
            last_error = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise AssertionError(f"timed out after {timeout_s:.1f}s waiting for {what}{detail}")
        time.sleep(interval_s)


@dataclass
class Stack:
    """Broker, workers and frontends of one test, with their logs under ``log_dir``."""

    log_dir: Path
    model_repository: Path | None = None
    name: str = "stack"
    broker_frontend_port: int = field(default_factory=free_port)
    broker_worker_port: int = field(default_factory=free_port)
    procs: list[Proc] = field(default_factory=list)
    _clients: list[grpcclient.InferenceServerClient] = field(default_factory=list)
    _counts: dict[str, int] = field(default_factory=dict)

    # -- addresses ------------------------------------------------------------------------

    @property
    def broker_frontend_addr(self) -> str:
        return f"tcp://127.0.0.1:{self.broker_frontend_port}"

    @property
    def broker_worker_addr(self) -> str:
        return f"tcp://127.0.0.1:{self.broker_worker_port}"

    @property
    def broker(self) -> Proc:
        return self._only("broker")

    @property
    def workers(self) -> list[Proc]:
        return [p for p in self.procs if p.name.startswith("worker")]

    @property
    def frontends(self) -> list[Proc]:
        return [p for p in self.procs if p.name.startswith("frontend")]

    @property
    def frontend(self) -> Proc:
        return self.frontends[0]

    def _only(self, prefix: str) -> Proc:
        found = [p for p in self.procs if p.name.startswith(prefix)]
        assert len(found) == 1, f"expected one {prefix}, have {[p.name for p in found]}"
        return found[0]

    # -- starting -------------------------------------------------------------------------

    def _spawn(self, kind: str, args: Sequence[str], port: int | None = None) -> Proc:
        index = self._counts.get(kind, 0)
        self._counts[kind] = index + 1
        name = kind if index == 0 else f"{kind}{index}"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{self.name}-{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        argv = [PYTHON, *args]
        proc = Proc(name, _popen(argv, log_file), log_path, log_file, argv, port)
        self.procs.append(proc)
        return proc

    def _restart_on_new_port(self, proc: Proc) -> None:
        """Start a process that died before binding again, with a new ``--port``."""
        argv = list(proc.args)
        proc.port = free_port()
        argv[argv.index("--port") + 1] = str(proc.port)
        proc.log_file.write(f"\n[stack] port taken; restarting on {proc.port}\n".encode())
        proc.log_file.flush()
        proc.args = argv
        proc.popen = _popen(argv, proc.log_file)

    def start_broker(self, extra_args: Sequence[str] = ()) -> Proc:
        return self._spawn(
            "broker",
            [
                "-m", "broker",
                "--frontend-bind", self.broker_frontend_addr,
                "--worker-bind", self.broker_worker_addr,
                "--heartbeat-interval-s", str(HEARTBEAT_INTERVAL_S),
                "--heartbeat-liveness", str(HEARTBEAT_LIVENESS),
                *extra_args,
            ],
        )  # fmt: skip

    def start_worker(
        self, model_repository: Path | None = None, extra_args: Sequence[str] = ()
    ) -> Proc:
        repo = model_repository or self.model_repository
        assert repo is not None, "no model repository for the worker"
        return self._spawn(
            "worker",
            [
                "-m", "worker",
                "--broker", self.broker_worker_addr,
                "--model-repository", str(repo),
                "--heartbeat-interval-s", str(HEARTBEAT_INTERVAL_S),
                "--device", "cpu",
                *extra_args,
            ],
        )  # fmt: skip

    def start_frontend(
        self, max_message_bytes: int | None = None, extra_args: Sequence[str] = ()
    ) -> Proc:
        port = free_port()
        args = [
            "-m", "frontend",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--broker", self.broker_frontend_addr,
            "--heartbeat-interval-s", str(HEARTBEAT_INTERVAL_S),
            # Repository tests load and unload; the default mode (none) refuses that.
            "--model-control-mode", "explicit",
        ]  # fmt: skip
        if max_message_bytes is not None:
            args += ["--max-message-bytes", str(max_message_bytes)]
        return self._spawn("frontend", [*args, *extra_args], port)

    # -- clients and waiting --------------------------------------------------------------

    def client(self, frontend: Proc | None = None) -> grpcclient.InferenceServerClient:
        """A tritonclient for a frontend (the first by default), closed by ``stop``."""
        client = grpcclient.InferenceServerClient((frontend or self.frontend).url)
        self._clients.append(client)
        return client

    def wait_live(self, frontend: Proc | None = None, timeout_s: float = 30.0) -> None:
        fe = frontend or self.frontend
        for attempt in range(PORT_ATTEMPTS):
            client = self.client(fe)
            try:
                wait_for(
                    lambda client=client: client.is_server_live(client_timeout=1.0),
                    timeout_s=timeout_s,
                    what=f"{fe.name} ServerLive on {fe.url}",
                    watch=self.procs,
                )
                return
            except ProcessDied:
                # free_port() only finds a port free a moment ago: another process may take
                # it before the frontend binds. That is the harness's race, not a failure.
                taken = not fe.alive() and PORT_TAKEN in fe.log_text()
                if not taken or attempt == PORT_ATTEMPTS - 1:
                    raise
                self._restart_on_new_port(fe)

    def wait_ready(
        self,
        models: Iterable[str] = (),
        frontend: Proc | None = None,
        timeout_s: float = STARTUP_TIMEOUT_S,
    ) -> None:
        """Wait until the frontend says the server and each of ``models`` are ready."""
        fe = frontend or self.frontend
        client = self.client(fe)
        deadline = time.monotonic() + timeout_s
        wait_for(
            lambda: client.is_server_ready(client_timeout=1.0),
            timeout_s=timeout_s,
            what=f"ServerReady on {fe.name}",
            watch=self.procs,
        )
        for model in models:
            wait_for(
                lambda m=model: client.is_model_ready(m, client_timeout=1.0),  # type: ignore[misc]
                timeout_s=max(1.0, deadline - time.monotonic()),
                what=f"ModelReady({model}) on {fe.name}",
                watch=self.procs,
            )

    def assert_alive(self) -> None:
        dead = [p.describe_exit() for p in self.procs if not p.alive()]
        assert not dead, "process(es) died:\n" + "\n".join(dead)

    # -- stopping -------------------------------------------------------------------------

    def kill(self, proc: Proc, sig: int = signal.SIGKILL, timeout_s: float = 10.0) -> int:
        """Send ``sig`` to one process (not its group) and wait for it to exit."""
        if proc.alive():
            os.kill(proc.pid, sig)
        try:
            return proc.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{proc.name} did not exit within {timeout_s}s of signal {sig}"
            ) from None

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM tier by tier (frontends, workers, broker), each waited for up to
        ``grace_s``; SIGKILL what is left. Never fails: tests check shutdown themselves."""
        for client in self._clients:
            try:
                client.close()
            except Exception:
                pass
        self._clients.clear()
        for tier in (self.frontends, self.workers, [p for p in self.procs if p.name == "broker"]):
            for proc in tier:
                if proc.alive():
                    try:
                        os.kill(proc.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + grace_s
            for proc in tier:
                try:
                    proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.log_file.write(b"\n[stack] still running after SIGTERM grace: SIGKILL\n")
                    proc.log_file.flush()
        for proc in self.procs:
            # The process group holds only what this process started (start_new_session).
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.popen.wait()
            proc.log_file.close()

    def tail_logs(self, lines: int = LOG_TAIL_LINES) -> str:
        parts = []
        for proc in self.procs:
            state = "running" if proc.alive() else f"exit code {proc.popen.returncode}"
            parts.append(
                f"----- {self.name}/{proc.name} pid {proc.pid} ({state}) {proc.log_path}\n"
                f"{proc.tail(lines)}"
            )
        return "\n".join(parts)


def owned_stacks(
    make_one: Callable[[int], S], register: Callable[[S], None]
) -> Iterator[Callable[[], S]]:
    """The body of a ``make_stack`` fixture: stacks made on demand (``make_one`` gets their
    number), each registered for the failure report, all stopped when the test ends."""
    stacks: list[S] = []

    def make() -> S:
        stack = make_one(len(stacks))
        stacks.append(stack)
        register(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()

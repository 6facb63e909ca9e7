"""Child processes of a benchmark: started with their output in a log file, always stopped.

A ``Proc`` leads its own session, so stopping it (SIGTERM, then SIGKILL after a grace period)
reaches the processes it started too, including any that made a process group of their own.
"""

from __future__ import annotations

import os
import random
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

from bench.procs import session_members


class StackError(RuntimeError):
    """A system under test did not start, or died, or did not become ready."""


def _ephemeral_low() -> int:
    """The lowest port the kernel gives to outgoing connections (32768 when unknown)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORT_LOW = 10000


def free_port() -> int:
    """A TCP port on the loopback interface that was free a moment ago.

    Taken below the kernel's ephemeral range: a port that ``bind(0)`` finds comes from that
    range, and any process's outgoing ``connect()`` may take it before our server binds it,
    which then dies with "Address already in use". Below the range only an explicit bind can.
    """
    high = _ephemeral_low()
    for _ in range(100 if high > _PORT_LOW + 1000 else 0):
        port = random.randrange(_PORT_LOW, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        found: int = s.getsockname()[1]
        return found


class Proc:
    """A child process with its output in a log file, always stopped with SIGTERM then SIGKILL."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        stop_signal: int = signal.SIGTERM,
        grace_s: float = 5.0,
    ) -> None:
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
        for pid in session_members(self.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_all(procs: list[Proc]) -> dict[str, int | None]:
    """Stop every process, last started first; each one's exit code (None where stopping
    failed)."""
    codes: dict[str, int | None] = {}
    for p in reversed(procs):
        try:
            codes[p.name] = p.stop()
        except Exception as exc:
            codes[p.name] = None
            print(f"bench: stopping {p.name} failed: {exc}", file=sys.stderr)
    return codes


def dead(procs: list[Proc]) -> dict[str, int | None]:
    """Exit codes of the processes that are no longer running."""
    return {p.name: p.popen.returncode for p in procs if not p.alive()}

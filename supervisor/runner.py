"""The process loop: start every tier, pump their output, restart what exits, stop in order.

One thread only. Signal handlers do nothing: ``signal.set_wakeup_fd`` writes each signal's
number to a pipe that the loop selects on together with the children's output, so no handler
ever takes a lock (an ``Event.set()`` in a handler deadlocked against ``Event.wait()`` in the
old runner). SIGCHLD is on that pipe too, so an exit is seen at once. Having no threads also
makes ``preexec_fn`` safe: children set ``PR_SET_PDEATHSIG`` there and die with the runner even
when it is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from .plan import ProcessSpec, Tier
from .policy import Clock, RestartConfig, RestartPolicy

REPO_ROOT = Path(__file__).resolve().parents[1]
GRACE_S = 15.0
"""Per tier, between SIGTERM and SIGKILL: above the tiers' own drain times (5-10 s)."""
TICK_S = 1.0
READ_BYTES = 65536
PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
BIND_FAILURES = ("Address already in use", "Failed to bind", "cannot bind", "EADDRINUSE")
LOG_PREFIX = "[run]"


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGKILL the child when the runner dies; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the runner died before prctl took effect
            os._exit(1)

    return preexec


@dataclass
class Replica:
    spec: ProcessSpec
    policy: RestartPolicy
    proc: subprocess.Popen[bytes] | None = None
    restart_at: float | None = None
    partial: bytes = b""
    bind_failed: bool = False
    kill_at: float | None = None
    reaped: bool = True  # no process, or its exit has been handled

    @property
    def name(self) -> str:
        return self.spec.name

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Supervisor:
    plan: Sequence[ProcessSpec]
    out: TextIO = sys.stdout
    grace_s: float = GRACE_S
    restart: RestartConfig = field(default_factory=RestartConfig)
    clock: Clock = time.monotonic
    python: str = sys.executable
    banner: str = ""

    def __post_init__(self) -> None:
        self.replicas = [Replica(s, RestartPolicy(self.clock, self.restart)) for s in self.plan]
        self._sel = selectors.DefaultSelector()
        self._preexec = _pdeathsig_preexec()
        self._stopping = False
        self._stop_tier: Tier | None = None
        self._failed = False
        self._out_ok = True

    # -- output ---------------------------------------------------------------------------

    def say(self, text: str) -> None:
        self._write(f"{LOG_PREFIX} {text}\n")

    def _write(self, text: str) -> None:
        if not self._out_ok:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except OSError:  # the terminal went away (SIGHUP): keep supervising silently
            self._out_ok = False

    def _pump(self, r: Replica, data: bytes) -> None:
        lines = (r.partial + data).split(b"\n")
        r.partial = lines.pop()
        for raw in lines:
            line = raw.decode(errors="replace")
            if any(marker in line for marker in BIND_FAILURES):
                r.bind_failed = True
            self._write(f"{r.name:<11}| {line}\n")

    # -- processes ------------------------------------------------------------------------

    def _start(self, r: Replica) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        r.proc = subprocess.Popen(
            [self.python, *r.spec.args],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only the runner; it stops them in order
            preexec_fn=self._preexec,
        )
        r.restart_at = None
        r.bind_failed = False
        r.reaped = False
        r.partial = b""
        assert r.proc.stdout is not None
        os.set_blocking(r.proc.stdout.fileno(), False)
        self._sel.register(r.proc.stdout, selectors.EVENT_READ, r)
        r.policy.started()
        self.say(f"started {r.name} pid {r.proc.pid}")

    def _drain_output(self, r: Replica) -> None:
        """Read what is left in an exited child's pipe, then forget the pipe."""
        if r.proc is None or r.proc.stdout is None or r.proc.stdout.closed:
            return
        stream = r.proc.stdout
        with contextlib.suppress(OSError):
            while data := os.read(stream.fileno(), READ_BYTES):
                self._pump(r, data)
        if r.partial:
            self._pump(r, b"\n")
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(stream)
        stream.close()

    def _on_exit(self, r: Replica) -> None:
        assert r.proc is not None
        code = r.proc.returncode
        r.reaped = True
        r.kill_at = None
        self._drain_output(r)
        if self._stopping:
            return
        if r.bind_failed:
            d = r.policy.give_up()
            ports = ", ".join(str(p.port) for p in r.spec.ports) or "its port"
            self.say(f"{r.name} could not bind ({ports}): address already in use; giving up on it")
        else:
            d = r.policy.exited()
        if d.give_up:
            if not r.bind_failed:
                self.say(
                    f"{r.name} exited {d.exits_in_window} times within "
                    f"{self.restart.crash_loop_window_s:.0f}s (last code {code}); crash loop, "
                    "giving up on it"
                )
            tier_left = [
                x for x in self.replicas if x.spec.tier is r.spec.tier and not x.policy.gave_up
            ]
            if not tier_left:
                self.say(f"no {r.spec.tier.name.lower()} left; stopping")
                self._failed = True
                self._begin_stop()
            return
        r.restart_at = d.restart_at
        self.say(f"{r.name} exited with {code}; restart {r.policy.restarts} in {d.delay_s:.1f}s")

    # -- stopping -------------------------------------------------------------------------

    def _begin_stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        for r in self.replicas:
            r.restart_at = None
        self._advance_stop()

    def _advance_stop(self) -> None:
        """SIGTERM the next tier once the current one is gone; SIGKILL after the grace."""
        now = self.clock()
        while True:
            if self._stop_tier is not None:
                current = [r for r in self.replicas if r.spec.tier is self._stop_tier]
                for r in current:
                    if r.alive() and r.kill_at is not None and now >= r.kill_at:
                        self.say(f"[shutdown] {r.name} still running after {self.grace_s:g}s; "
                                 "SIGKILL")  # fmt: skip
                        self._kill(r)
                        r.kill_at = None
                if any(r.alive() for r in current):
                    return
                if self._stop_tier is Tier.BROKER:
                    return
                self._stop_tier = Tier(self._stop_tier.value + 1)
            else:
                self._stop_tier = Tier.FRONTEND
            for r in self.replicas:
                if r.spec.tier is self._stop_tier and r.alive():
                    assert r.proc is not None
                    with contextlib.suppress(ProcessLookupError):
                        r.proc.send_signal(signal.SIGTERM)
                    r.kill_at = now + self.grace_s

    def _kill(self, r: Replica) -> None:
        if r.proc is None:
            return
        # The child leads its own process group: that reaches anything it started too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(r.proc.pid, signal.SIGKILL)

    def _kill_all(self) -> None:
        for r in self.replicas:
            if r.alive():
                self._kill(r)

    def _all_stopped(self) -> bool:
        return all(not r.alive() for r in self.replicas)

    # -- the loop -------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            return
        name = signal.Signals(signum).name
        if not self._stopping:
            self.say(f"[shutdown] {name}: stopping frontends, then workers, then brokers")
            self._begin_stop()
        elif signum == signal.SIGINT:
            self.say("[shutdown] second Ctrl-C: killing every process now")
            self._kill_all()
        else:
            # Only a second Ctrl-C kills: `kill -TERM -<group>` of `make run` delivers SIGTERM
            # twice (once to us, once forwarded by make), and that must still drain in order.
            self.say(f"[shutdown] {name} again: already stopping (Ctrl-C again kills now)")

    def _timeout(self) -> float:
        now = self.clock()
        due = [r.restart_at for r in self.replicas if r.restart_at is not None]
        due += [r.kill_at for r in self.replicas if r.kill_at is not None and r.alive()]
        if not due:
            return TICK_S
        return max(0.0, min(TICK_S, min(due) - now))

    def run(self) -> int:
        """Start everything and supervise until stopped. 0 after a signal, 1 on give-up."""
        rfd, wfd = os.pipe()
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        noop: Callable[[int, object], None] = lambda _s, _f: None  # noqa: E731
        handled = (*STOP_SIGNALS, signal.SIGCHLD)
        previous = {s: signal.signal(s, noop) for s in handled}
        previous_fd = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        self._sel.register(rfd, selectors.EVENT_READ, None)
        try:
            for r in self.replicas:
                self._start(r)
            if self.banner:
                self.say(self.banner)
            while not (self._stopping and self._all_stopped()):
                for key, _ in self._sel.select(self._timeout()):
                    if key.data is None:
                        with contextlib.suppress(BlockingIOError):
                            for signum in os.read(rfd, 512):
                                self._on_signal(signum)
                        continue
                    r = key.data
                    try:
                        data = os.read(key.fd, READ_BYTES)
                    except BlockingIOError:
                        continue
                    if data:
                        self._pump(r, data)
                    else:
                        self._sel.unregister(key.fileobj)
                for r in self.replicas:
                    if r.proc is not None and not r.reaped and not r.alive():
                        self._on_exit(r)
                now = self.clock()
                for r in self.replicas:
                    if r.restart_at is not None and now >= r.restart_at and not self._stopping:
                        self.say(f"restarting {r.name}")
                        self._start(r)
                if self._stopping:
                    self._advance_stop()
        finally:
            self._kill_all()
            for r in self.replicas:
                if r.proc is not None:
                    r.proc.wait()
                    self._drain_output(r)
            signal.set_wakeup_fd(previous_fd)
            for s, h in previous.items():
                signal.signal(s, h)
            self._sel.close()
            os.close(rfd)
            os.close(wfd)
        self.say("[shutdown] all stopped")
        return 1 if self._failed else 0

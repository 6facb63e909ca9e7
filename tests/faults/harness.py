"""Fault-injection harness: stacks whose processes can be suspended and whose broker can be
restarted, a closed-loop load generator that classifies every call, and the chaos records.

A call is *ok* when it returned a correct answer, *failed* when it ended with an error status
(or a wrong answer), and *lost* when it had not ended by its deadline plus ``grace_s`` (a hang:
the client gives up on it) or ended without any status at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from tests.faults.models import WORK_DIM
from tests.integration.stack import HEARTBEAT_LIVENESS, Proc, Stack, wait_for

OK = "OK"
LOST = "LOST"
WRONG = "WRONG_ANSWER"
DEFAULT_GRACE_S = 2.0


# -- stacks ---------------------------------------------------------------------------------


@dataclass
class FaultStack(Stack):
    """A ``Stack`` whose tiers all use the same heartbeat liveness (short by default), whose
    broker can be restarted on the same ports, and whose processes can be suspended (SIGSTOP)
    and resumed."""

    suspended: set[int] = field(default_factory=set)
    liveness: int = HEARTBEAT_LIVENESS
    """Missed heartbeats (of HEARTBEAT_INTERVAL_S) before a peer counts as dead, every tier."""

    def start_broker(self, extra_args: Sequence[str] = ()) -> Proc:
        # The last --heartbeat-liveness wins.
        return super().start_broker(["--heartbeat-liveness", str(self.liveness), *extra_args])

    def start_worker(
        self, model_repository: Path | None = None, extra_args: Sequence[str] = ()
    ) -> Proc:
        return super().start_worker(
            model_repository,
            [
                "--heartbeat-liveness", str(self.liveness),
                "--torch-threads", "1",
                *extra_args,
            ],
        )  # fmt: skip

    def start_frontend(
        self, max_message_bytes: int | None = None, extra_args: Sequence[str] = ()
    ) -> Proc:
        return super().start_frontend(
            max_message_bytes, ["--heartbeat-liveness", str(self.liveness), *extra_args]
        )

    @property
    def broker(self) -> Proc:
        """The latest broker started (a restarted one replaces the killed one)."""
        brokers = [p for p in self.procs if p.name.startswith("broker")]
        assert brokers, "no broker started"
        return brokers[-1]

    def restart_broker(self, timeout_s: float = 30.0) -> float:
        """Start a new broker on the same ports; returns the time (monotonic) it listened."""
        proc = self.start_broker()
        for port in (self.broker_frontend_port, self.broker_worker_port):
            wait_for(
                lambda port=port: _accepts(port),  # type: ignore[misc]
                timeout_s=timeout_s,
                what=f"the new broker listening on port {port}",
                watch=[proc],
                interval_s=0.01,
            )
        return time.monotonic()

    def suspend(self, proc: Proc) -> None:
        os.kill(proc.pid, signal.SIGSTOP)
        self.suspended.add(proc.pid)

    def resume(self, proc: Proc) -> None:
        os.kill(proc.pid, signal.SIGCONT)
        self.suspended.discard(proc.pid)

    def stop(self, grace_s: float = 5.0) -> None:
        for pid in list(self.suspended):  # a stopped process cannot act on SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.suspended.clear()
        super().stop(grace_s)

    def assert_alive(self, killed: Iterable[Proc] = ()) -> None:
        """Every process is running but those in ``killed`` (and replaced brokers)."""
        gone = {id(p) for p in killed}
        current = self.broker if any(p.name.startswith("broker") for p in self.procs) else None
        dead = [
            p.describe_exit()
            for p in self.procs
            if not p.alive()
            and id(p) not in gone
            and (not p.name.startswith("broker") or p is current)
        ]
        assert not dead, "process(es) died:\n" + "\n".join(dead)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def vm_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


# -- calls and requests ---------------------------------------------------------------------


@dataclass(slots=True)
class Call:
    started_s: float  # time.monotonic() when sent
    latency_s: float
    status: str  # OK, a gRPC status name (UNAVAILABLE, ...), WRONG_ANSWER or LOST
    message: str = ""
    pid: int = 0  # the worker that answered, for models that say so

    @property
    def ended_s(self) -> float:
        return self.started_s + self.latency_s


Check = Callable[[grpcclient.InferResult], int]
"""Raises AssertionError on a wrong answer; returns the pid of the worker that answered (or 0)."""
Request = tuple[list[grpcclient.InferInput], Check]


def work_request(rng: np.random.Generator) -> Request:
    """A one-row ``work`` call with random input, and the check of its answer."""
    x = rng.integers(-(2**20), 2**20, size=(1, WORK_DIM), dtype=np.int32)
    inp = grpcclient.InferInput("INPUT0", [1, WORK_DIM], "INT32")
    inp.set_data_from_numpy(x)

    def check(result: grpcclient.InferResult) -> int:
        out = result.as_numpy("OUTPUT0")
        pid = result.as_numpy("PID")
        assert out is not None and pid is not None, "missing outputs"
        np.testing.assert_array_equal(out, x * 2 + 1)
        assert pid.shape == (1, 1), pid.shape
        return int(pid[0, 0])

    return [inp], check


def tagged_inputs(tag: int, delay_ms: int) -> list[grpcclient.InferInput]:
    """Inputs of the ``slow_*`` models."""
    out = []
    for name, value in (("TAG", tag), ("DELAY_MS", delay_ms)):
        inp = grpcclient.InferInput(name, [1, 1], "INT32")
        inp.set_data_from_numpy(np.array([[value]], dtype=np.int32))
        out.append(inp)
    return out


def status_name(exc: InferenceServerException) -> str:
    status = exc.status() or "UNKNOWN"
    return str(status).removeprefix("StatusCode.")


async def timed_call(
    client: aioclient.InferenceServerClient,
    model: str,
    request: Request,
    timeout_s: float,
    grace_s: float = DEFAULT_GRACE_S,
) -> Call:
    """One call with a gRPC deadline of ``timeout_s``; LOST when it has not ended by then plus
    ``grace_s``."""
    inputs, check = request
    started = time.monotonic()
    try:
        result = await asyncio.wait_for(
            client.infer(model, inputs, client_timeout=timeout_s), timeout_s + grace_s
        )
    except TimeoutError:
        return Call(started, time.monotonic() - started, LOST, "no answer by deadline + grace")
    except InferenceServerException as exc:
        return Call(started, time.monotonic() - started, status_name(exc), exc.message() or "")
    latency = time.monotonic() - started
    if result is None:
        return Call(started, latency, LOST, "no response")
    try:
        pid = check(result)
    except AssertionError as exc:
        return Call(started, latency, WRONG, str(exc)[:200])
    return Call(started, latency, OK, "", pid)


class ClosedLoop:
    """``concurrency`` callers on an asyncio loop in a background thread; each sends its next
    call as soon as the previous one ended (after ``pause_after_error_s`` when it failed),
    until ``stop``."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        concurrency: int,
        timeout_s: float,
        make: Callable[[np.random.Generator], Request] = work_request,
        grace_s: float = DEFAULT_GRACE_S,
        pause_after_error_s: float = 0.01,
        seed: int = 0,
    ) -> None:
        self.url = url
        self.model = model
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self.pause_after_error_s = pause_after_error_s
        self._make = make
        self._rng = np.random.default_rng(seed)
        self.calls: list[Call] = []
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"load-{model}", daemon=True)
        self.started_s = 0.0

    def start(self) -> ClosedLoop:
        self.started_s = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> list[Call]:
        self._stop.set()
        self._thread.join(self.timeout_s + self.grace_s + 30)
        assert not self._thread.is_alive(), "the load generator did not stop"
        if self._error is not None:
            raise AssertionError(f"load generator crashed: {self._error!r}") from self._error
        return self.calls

    def wait_until(
        self, predicate: Callable[[list[Call]], bool], timeout_s: float, what: str
    ) -> None:
        wait_for(lambda: predicate(list(self.calls)), timeout_s=timeout_s, what=what)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by stop()
            self._error = exc

    async def _main(self) -> None:
        client = aioclient.InferenceServerClient(self.url)
        try:
            await asyncio.gather(*(self._caller(client) for _ in range(self.concurrency)))
        finally:
            await client_close(client)

    async def _caller(self, client: aioclient.InferenceServerClient) -> None:
        while not self._stop.is_set():
            call = await timed_call(
                client, self.model, self._make(self._rng), self.timeout_s, self.grace_s
            )
            self.calls.append(call)
            if call.status != OK and self.pause_after_error_s:
                await asyncio.sleep(self.pause_after_error_s)


async def client_close(client: aioclient.InferenceServerClient) -> None:
    with contextlib.suppress(Exception):
        await client.close()


# -- records ----------------------------------------------------------------------------------


@dataclass
class Record:
    """One scenario's line in the chaos report."""

    scenario: str
    calls: int
    ok: int
    failed: int
    lost: int
    max_latency_ms: float
    statuses: dict[str, int]
    test: str = ""
    notes: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


RECORDS: list[Record] = []


def summarize(scenario: str, calls: Iterable[Call], test: str = "", notes: str = "") -> Record:
    calls = list(calls)
    statuses = Counter(c.status for c in calls)
    lost = statuses.get(LOST, 0)
    ok = statuses.get(OK, 0)
    return Record(
        scenario=scenario,
        calls=len(calls),
        ok=ok,
        failed=len(calls) - ok - lost,
        lost=lost,
        max_latency_ms=round(max((c.latency_s for c in calls), default=0.0) * 1000, 1),
        statuses=dict(sorted(statuses.items())),
        test=test,
        notes=notes,
    )


def between(calls: Iterable[Call], start_s: float, end_s: float = float("inf")) -> list[Call]:
    """Calls sent at or after ``start_s`` and before ``end_s`` (monotonic)."""
    return [c for c in calls if start_s <= c.started_s < end_s]


def failures(calls: Iterable[Call], allowed: Iterable[str] = (OK,), limit: int = 5) -> list[str]:
    allowed = set(allowed)
    bad = [c for c in calls if c.status not in allowed]
    return [f"{c.status} after {c.latency_s * 1000:.0f} ms: {c.message}" for c in bad[:limit]]


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    return float(np.percentile(np.asarray(values), q))

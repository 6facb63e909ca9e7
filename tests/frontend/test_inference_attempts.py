"""``InferenceService`` executing the planner against a scripted fabric client: how many copies
reach the fabric, which are cancelled, what the caller gets, and the retry/hedge counters."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from fabric import errors
from fabric.errors import RequestError
from fabric.protocol import CatalogEntry
from frontend.brokers import BrokerGate
from frontend.config import FrontendConfig
from frontend.fabric_client import Reply
from frontend.inference_service import InferenceService
from frontend.wire import RequestRoute
from protos import model_config_pb2 as mc

OK = Reply(errors.OK, "", b"response")
UNAVAILABLE = Reply(errors.UNAVAILABLE, "the worker serving this request was lost", None)
NEVER = None  # a copy that never answers
Script = Reply | RequestError | tuple[float, Reply] | None


def open_gate() -> BrokerGate:
    gate = BrokerGate(0.0)
    gate.worker_up()
    return gate


@dataclass
class ScriptedClient:
    """Each submit takes the next script item: a reply at once, ``(delay_s, reply)``, a
    ``RequestError`` to raise, or ``NEVER``."""

    script: list[Script]
    params: dict[str, str] = field(default_factory=dict)
    submits: list[dict[str, int]] = field(default_factory=list)
    cancels: list[int] = field(default_factory=list)
    catalog_version: int = 1
    gate: BrokerGate = field(default_factory=open_gate)

    def submit(
        self, model: str, version: str, deadline_ns: int, payload: bytes, **kw: int
    ) -> tuple[int, asyncio.Future[Reply], object]:
        item = self.script.pop(0) if self.script else OK
        if isinstance(item, RequestError):
            raise item
        self.submits.append(kw)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Reply] = loop.create_future()
        if isinstance(item, tuple):
            loop.call_later(item[0], lambda: fut.done() or fut.set_result(item[1]))
        elif item is not None:
            fut.set_result(item)
        return len(self.submits), fut, None

    def cancel(self, request_id: int) -> None:
        self.cancels.append(request_id)

    def models(self) -> dict[tuple[str, str], tuple[CatalogEntry, int]]:
        config = mc.ModelConfig(name="m")
        for key, value in self.params.items():
            config.parameters[key].string_value = value
        return {("m", "1"): (CatalogEntry("m", "1", config.SerializeToString(), 1), 1)}

    def workers(self) -> int:
        return 1


def infer(client: ScriptedClient, remaining_s: float | None = None) -> tuple[Reply, dict[str, int]]:
    svc = InferenceService(FrontendConfig(), client, "test")  # type: ignore[arg-type]
    reply = asyncio.run(svc.infer(RequestRoute("m", "", ""), b"payload", remaining_s))
    return reply, svc.counters


def test_one_try_one_reply_sends_once_and_cancels_nothing() -> None:
    client = ScriptedClient([OK])
    reply, counters = infer(client)
    assert reply == OK
    assert len(client.submits) == 1 and client.submits[0]["flags"] == 0
    assert client.submits[0].get("hedge_of", 0) == 0
    assert client.cancels == []
    assert counters == {"retries": 0, "hedges": 0, "rejected": 0, "rejected_bytes": 0}


def test_unavailable_is_retried_and_counted() -> None:
    client = ScriptedClient([UNAVAILABLE, UNAVAILABLE, OK])
    reply, counters = infer(client)
    assert reply == OK
    assert len(client.submits) == 3
    assert counters["retries"] == 2


def test_a_copy_that_cannot_be_sent_is_retried_like_a_failure() -> None:
    client = ScriptedClient([RequestError(errors.UNAVAILABLE, "no broker is reachable"), OK])
    reply, counters = infer(client)
    assert reply == OK
    assert counters["retries"] == 1


def test_out_of_retries_answers_with_the_last_failure() -> None:
    last = Reply(errors.UNAVAILABLE, "no live worker serves model 'm'", None)
    client = ScriptedClient([UNAVAILABLE, UNAVAILABLE, last])
    reply, counters = infer(client)
    assert reply == last
    assert counters["retries"] == 2  # FrontendConfig.max_retries


def test_deadline_cancels_the_copy_and_answers_deadline_exceeded() -> None:
    client = ScriptedClient([NEVER])
    reply, _ = infer(client, remaining_s=0.05)
    assert reply.status == errors.DEADLINE_EXCEEDED
    assert reply.message == "deadline exceeded waiting for a worker"
    assert client.cancels == [1]


def test_hedge_is_sent_after_the_delay_and_the_loser_cancelled() -> None:
    client = ScriptedClient([NEVER, (0.01, OK)], params={"hedge_after_ms": "20"})
    reply, counters = infer(client)
    assert reply == OK
    assert [s.get("hedge_of", 0) for s in client.submits] == [0, 1]  # a copy of request 1
    assert client.cancels == [1]  # the first copy, still in flight
    assert counters["hedges"] == 1


def test_no_hedge_when_the_first_copy_answers_in_time() -> None:
    client = ScriptedClient([(0.005, OK)], params={"hedge_after_ms": "200"})
    reply, counters = infer(client)
    assert reply == OK
    assert len(client.submits) == 1 and counters["hedges"] == 0


def test_hedges_error_is_ignored_while_the_first_copy_can_still_answer() -> None:
    client = ScriptedClient([(0.05, OK), UNAVAILABLE], params={"hedge_after_ms": "10"})
    reply, counters = infer(client)
    assert reply == OK
    assert counters == {"retries": 0, "hedges": 1, "rejected": 0, "rejected_bytes": 0}
    assert client.cancels == []  # both copies answered


def test_hedge_that_cannot_be_sent_is_not_counted() -> None:
    client = ScriptedClient(
        [(0.05, OK), RequestError(errors.UNAVAILABLE, "no broker")],
        params={"hedge_after_ms": "10"},
    )
    reply, counters = infer(client)
    assert reply == OK
    assert counters["hedges"] == 0


@pytest.mark.parametrize("idempotent", ["false", "0", "no"])
def test_non_idempotent_model_never_hedges(idempotent: str) -> None:
    client = ScriptedClient([(0.05, OK)], params={"hedge_after_ms": "10", "idempotent": idempotent})
    reply, counters = infer(client)
    assert reply == OK
    assert len(client.submits) == 1 and counters["hedges"] == 0
    assert client.submits[0]["flags"] != 0  # the fabric is told not to run it twice


def test_cancelled_call_cancels_its_copies_in_flight() -> None:
    client = ScriptedClient([NEVER, NEVER], params={"hedge_after_ms": "5"})
    svc = InferenceService(FrontendConfig(), client, "test")  # type: ignore[arg-type]

    async def run() -> None:
        task = asyncio.create_task(svc.infer(RequestRoute("m", "", ""), b"", None))
        for _ in range(100):
            await asyncio.sleep(0.005)
            if len(client.submits) == 2:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert sorted(client.cancels) == [1, 2]
    assert svc.in_flight == 0

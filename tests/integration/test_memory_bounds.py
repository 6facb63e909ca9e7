"""Byte bounds end to end (issue 14): a frontend refuses a call that would take the request
bytes it holds past ``--max-in-flight-bytes``, a broker one that would take the payload bytes
waiting in its queues past ``--max-queued-bytes``; both answer RESOURCE_EXHAUSTED with a text
naming the limit and the sizes, count it, and keep serving.

``sleepy`` has one instance and no batching: one long call runs while the calls after it wait
on the worker up to its credit, then in the broker's queue. A call's size is set by padding its
request id, which every tier carries untouched.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import tritonclient.grpc as grpcclient

from .helpers import check_simple, expect_error
from .stack import Stack, free_port, wait_for
from .test_deadlines import sleepy_inputs
from .test_metrics import metrics_port_of, parse, scrape, value

PAD = 2000  # a padded sleepy call is about this many bytes; an unpadded one under 100
FRONTEND_LIMIT = 4 * PAD  # room for the calls held plus one more padded call
BROKER_LIMIT = 3 * PAD // 2  # room for one padded call waiting
HOLD_MS = 8000  # long enough to check every refusal while the first call runs


def sleepy_call(stack: Stack, pad: int, delay_ms: int = 0) -> grpcclient.InferResult:
    client = stack.client()
    return client.infer("sleepy", sleepy_inputs(delay_ms), request_id="x" * pad, client_timeout=60)


@pytest.mark.timeout(240)
def test_byte_bounds_refuse_with_limit_and_sizes_and_the_stack_keeps_serving(
    make_stack: Callable[[], Stack],
) -> None:
    fe_port = free_port()
    stack = make_stack()
    broker = stack.start_broker(extra_args=["--max-queued-bytes", str(BROKER_LIMIT)])
    stack.start_worker()
    stack.start_frontend(
        extra_args=["--max-in-flight-bytes", str(FRONTEND_LIMIT), "--metrics-port", str(fe_port)]
    )
    stack.wait_ready(["sleepy", "simple"])
    broker_port = metrics_port_of(broker)
    procs = [*stack.frontends, broker]

    def broker_sees(name: str, n: int, **labels: str) -> None:
        wait_for(
            lambda: value(scrape(broker_port), name, **labels) == n,
            timeout_s=30,
            what=f"broker {name}{labels} == {n}",
            watch=procs,
        )

    credit = int(
        wait_for(  # the broker's metrics follow its state once per heartbeat
            lambda: value(scrape(broker_port), "fabric_broker_credit", model="sleepy"),
            timeout_s=30,
            what="the broker exports sleepy's credit",
            watch=procs,
        )
    )
    with ThreadPoolExecutor(credit + 1) as pool:
        # The long call runs; the worker takes `credit - 1` more, then one padded call waits
        # in the broker's queue (PAD bytes of BROKER_LIMIT). The frontend holds them all.
        held: list[Future[grpcclient.InferResult]] = [pool.submit(sleepy_call, stack, 0, HOLD_MS)]
        broker_sees("fabric_broker_in_flight", 1)
        held += [pool.submit(sleepy_call, stack, 0) for _ in range(credit - 1)]
        broker_sees("fabric_broker_in_flight", credit)
        held.append(pool.submit(sleepy_call, stack, PAD))
        broker_sees("fabric_broker_queue_depth", 1, model="sleepy")
        held_bytes = int(value(scrape(fe_port), "fabric_frontend_in_flight_bytes"))
        assert PAD < held_bytes < 2 * PAD  # the padded call and the small ones
        assert PAD <= value(scrape(broker_port), "fabric_broker_queued_bytes") <= PAD + 200

        # The frontend has room; the broker's queue has not.
        exc = expect_error("RESOURCE_EXHAUSTED", sleepy_call, stack, PAD)
        assert re.fullmatch(
            rf"broker queue full: request of \d+ bytes with \d+ bytes waiting would exceed "
            rf"--max-queued-bytes \({BROKER_LIMIT} bytes\)",
            exc.message(),
        ), exc.message()
        # The frontend has no room for this one beside those it holds.
        exc = expect_error("RESOURCE_EXHAUSTED", sleepy_call, stack, 3 * PAD)
        assert re.fullmatch(
            rf"frontend at byte capacity: request of \d+ bytes with {held_bytes} bytes "
            rf"in flight would exceed --max-in-flight-bytes \({FRONTEND_LIMIT} bytes\)",
            exc.message(),
        ), exc.message()
        # Nor ever for one larger than its whole bound.
        exc = expect_error("RESOURCE_EXHAUSTED", sleepy_call, stack, 2 * FRONTEND_LIMIT)
        assert re.fullmatch(
            rf"request of \d+ bytes is larger than the frontend's --max-in-flight-bytes "
            rf"\({FRONTEND_LIMIT} bytes\)",
            exc.message(),
        ), exc.message()
        delays = [call.result(timeout=60).as_numpy("OUTPUT0").tolist() for call in held]
        assert delays == [[[HOLD_MS]]] + [[[0]]] * credit  # the refusals disturbed none

    check_simple(stack.client())
    assert sleepy_call(stack, 2 * PAD).as_numpy("OUTPUT0").tolist() == [[0]]
    fe = parse(scrape(fe_port))
    assert value(fe, "fabric_frontend_rejected_bytes_total") == 2
    assert value(fe, "fabric_frontend_rejected_total") == 0
    assert value(fe, "fabric_frontend_in_flight_bytes") == 0
    assert value(scrape(broker_port), "fabric_broker_rejected_total") == 1

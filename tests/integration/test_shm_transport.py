"""The shared memory slab transport (``fabric.shm_transport``) between real processes on one
host: large calls go through slabs named after the frontend's pid and come back exact; a
frontend with ``--shm-transport off``, or whose model has a worker with it off, makes none; a
frontend stopped cleanly leaves none; calls given up on mid-flight never corrupt the calls that
reuse slabs after them; and a new frontend removes the slabs of one that was killed."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from fabric.shm_transport import local_domain
from tests.integration.stack import Proc, Stack, wait_for

# Without a usable /dev/shm (or boot id) every tier leaves the transport off, as designed.
pytestmark = pytest.mark.skipif(not local_domain(), reason="no usable /dev/shm on this host")

SHM_DIR = Path("/dev/shm")
MODEL = "identity_fp32"
LARGE_FLOATS = 1 << 20  # 4 MiB of FP32: well past the transport's 256 KiB threshold
STORM_THREADS = 8
STORM_CALLS = 48
STORM_TIMEOUTS_S = (0.005, 0.02, 0.05, 0.1, 0.3, 60.0)


def slabs_of(frontend: Proc) -> list[str]:
    """Names of the slabs ``frontend``'s process made (``fsrv.<domain>.<pid>.<token>.<n>``)."""
    return sorted(p.name for p in SHM_DIR.glob(f"fsrv.*.{frontend.pid}.*"))


def only_identity(model_repo: Path, tmp_path: Path) -> Path:
    """A repository with just the identity model: a worker that is ready sooner."""
    repo = tmp_path / "identity_repo"
    repo.mkdir()
    shutil.copytree(model_repo / MODEL, repo / MODEL)
    return repo


def start(
    make_stack: Callable[[], Stack], repo: Path, frontend_args: list[str] | None = None
) -> Stack:
    stack = make_stack()
    stack.start_broker()
    stack.start_worker(repo)
    stack.start_frontend(extra_args=frontend_args or [])
    stack.wait_live()
    stack.wait_ready([MODEL])
    return stack


def identity_input(x: np.ndarray) -> list[grpcclient.InferInput]:
    inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return [inp]


def large(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, LARGE_FLOATS)).astype(np.float32)


def call(stack: Stack, x: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
    client = grpcclient.InferenceServerClient(stack.frontend.url)
    try:
        out = client.infer(MODEL, identity_input(x), client_timeout=timeout_s)
        got: np.ndarray = out.as_numpy("OUTPUT0")
        return got
    finally:
        client.close()


def assert_exact(got: np.ndarray, sent: np.ndarray) -> None:
    assert got.shape == sent.shape
    assert got.tobytes() == sent.tobytes()


@pytest.mark.timeout(240)
def test_large_calls_go_through_slabs_that_a_clean_stop_removes(
    make_stack: Callable[[], Stack], model_repo: Path, tmp_path: Path
) -> None:
    stack = start(make_stack, only_identity(model_repo, tmp_path))
    frontend = stack.frontend
    assert slabs_of(frontend) == []  # nothing made before a large call
    inputs = [large(seed) for seed in range(6)]
    with ThreadPoolExecutor(3) as pool:
        results = [pool.submit(call, stack, x) for x in inputs]
        wait_for(
            lambda: slabs_of(frontend),
            timeout_s=60.0,
            what=f"a slab of frontend pid {frontend.pid} in {SHM_DIR}",
            watch=stack.procs,
        )
        for x, result in zip(inputs, results, strict=True):
            assert_exact(result.result(timeout=60.0), x)
    assert_exact(call(stack, inputs[0]), inputs[0])  # again, through a reused slab
    assert slabs_of(frontend)  # kept for reuse while the frontend runs
    assert len(slabs_of(frontend)) <= 3 + 1

    stack.stop()
    assert frontend.popen.returncode == 0, frontend.tail()
    assert slabs_of(frontend) == []


@pytest.mark.timeout(240)
def test_a_frontend_with_the_transport_off_makes_no_slab(
    make_stack: Callable[[], Stack], model_repo: Path, tmp_path: Path
) -> None:
    stack = start(make_stack, only_identity(model_repo, tmp_path), ["--shm-transport", "off"])
    for seed in range(3):
        x = large(seed)
        assert_exact(call(stack, x), x)
    assert slabs_of(stack.frontend) == []


@pytest.mark.timeout(300)
def test_a_model_with_a_worker_off_the_transport_goes_inline(
    make_stack: Callable[[], Stack], model_repo: Path, tmp_path: Path
) -> None:
    """One of the model's two workers has the transport off: the broker's catalog gives the
    model no domain, so even a frontend with it on sends the bytes inline, to either worker."""
    repo = only_identity(model_repo, tmp_path)
    stack = make_stack()
    broker = stack.start_broker()
    stack.start_worker(repo, ["--shm-transport", "off"])
    serving = f"serves {MODEL}:1"
    wait_for(
        lambda: broker.log_text().count(serving) >= 1,
        timeout_s=90.0,
        what="the first worker at the broker",
        watch=stack.procs,
    )
    stack.start_worker(repo)
    wait_for(
        lambda: broker.log_text().count(serving) >= 2,
        timeout_s=90.0,
        what="both workers at the broker",
        watch=stack.procs,
    )
    stack.start_frontend()  # its first catalog already holds both workers
    stack.wait_live()
    stack.wait_ready([MODEL])
    inputs = [large(seed) for seed in range(6)]
    with ThreadPoolExecutor(2) as pool:
        for x, got in zip(inputs, pool.map(lambda x: call(stack, x), inputs), strict=True):
            assert_exact(got, x)
    assert slabs_of(stack.frontend) == []


@pytest.mark.timeout(300)
def test_calls_given_up_on_never_corrupt_later_calls(
    make_stack: Callable[[], Stack], model_repo: Path, tmp_path: Path
) -> None:
    """Many concurrent calls, most with deadlines too short to finish: a call given up on
    takes its slab with it while its worker may still run it, so the calls that follow (in
    slabs reused from finished calls) must all come back exact."""
    stack = start(make_stack, only_identity(model_repo, tmp_path))
    inputs = [np.full((1, LARGE_FLOATS), i, np.float32) for i in range(STORM_CALLS)]

    def one(i: int) -> str:
        x = inputs[i]
        try:
            got = call(stack, x, STORM_TIMEOUTS_S[i % len(STORM_TIMEOUTS_S)])
        except InferenceServerException as exc:
            assert exc.status() == "StatusCode.DEADLINE_EXCEEDED", exc.message()
            return "timed out"
        assert_exact(got, x)
        return "ok"

    with ThreadPoolExecutor(STORM_THREADS) as pool:
        outcomes = list(pool.map(one, range(STORM_CALLS)))
    assert "timed out" in outcomes
    assert "ok" in outcomes
    stack.assert_alive()
    # Slabs of calls given up on are gone; what is left are idle ones, at most one per
    # call that ever ran at once.
    assert len(slabs_of(stack.frontend)) <= STORM_THREADS

    later = [large(1000 + i) for i in range(12)]
    with ThreadPoolExecutor(4) as pool:
        for x, got in zip(later, pool.map(lambda x: call(stack, x, 60.0), later), strict=True):
            assert_exact(got, x)
    assert len(slabs_of(stack.frontend)) <= STORM_THREADS


@pytest.mark.timeout(300)
def test_a_new_frontend_removes_the_slabs_of_a_killed_one(
    make_stack: Callable[[], Stack], model_repo: Path, tmp_path: Path
) -> None:
    stack = start(make_stack, only_identity(model_repo, tmp_path))
    killed = stack.frontend
    x = large(7)
    assert_exact(call(stack, x), x)
    left = slabs_of(killed)
    assert left, "no idle slab after a large call"

    stack.kill(killed)
    assert slabs_of(killed) == left  # nobody unlinked them: the process just vanished
    stack.procs.remove(killed)  # a dead process would fail the stack's waits
    killed.log_file.close()

    successor = stack.start_frontend()
    stack.wait_live(successor)
    wait_for(
        lambda: not slabs_of(killed),
        timeout_s=30.0,
        what=f"the new frontend to remove the slabs of killed pid {killed.pid}",
        watch=stack.procs,
    )
    stack.wait_ready([MODEL], successor)
    client = grpcclient.InferenceServerClient(successor.url)
    try:
        got = client.infer(MODEL, identity_input(x)).as_numpy("OUTPUT0")
    finally:
        client.close()
    assert_exact(got, x)
    assert slabs_of(successor)  # it took slabs of its own

"""More than one host, simulated honestly: network namespaces joined by a bridge, one broker
host, two frontend hosts and two worker hosts on real addresses, CURVE on.

Cutting one worker host's link under load costs no call (its work is requeued); restoring it
brings it back into service; a worker host added at run time gets traffic within 2 s of
registering. Needs root and iproute2 (`ip netns`); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
import tritonclient.grpc as grpcclient

from fabric.curve import init_keys
from tests.faults.conftest import Chaos
from tests.faults.harness import OK, Call, ClosedLoop, between, failures
from tests.integration.stack import HEARTBEAT_INTERVAL_S, PYTHON, REPO_ROOT, wait_for

SUBNET = "10.231.7"
GRPC_PORT = 8001
FRONTEND_FABRIC_PORT = 5555
WORKER_FABRIC_PORT = 5556
LIVENESS = 3
DETECT_S = HEARTBEAT_INTERVAL_S * LIVENESS
JOIN_WITHIN_S = 2.0
CALL_TIMEOUT_S = 15.0


def _can_make_namespaces() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"fsprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    if made:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return made


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not _can_make_namespaces(), reason="needs root and `ip netns`"),
]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Host:
    name: str
    address: str
    namespace: str
    link: str  # the bridge-side end of its veth pair: down = the host is cut off


@dataclass
class Network:
    """A bridge in the test's namespace and hosts (namespaces) plugged into it."""

    tag: str
    bridge: str = ""
    hosts: dict[str, Host] = field(default_factory=dict)
    procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.bridge = f"fsbr{self.tag}"
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{SUBNET}.1/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add_host(self, name: str, octet: int) -> Host:
        ns, outer, inner = f"fs{self.tag}{name}", f"fso{self.tag}{octet}", f"fsi{self.tag}{octet}"
        _ip("netns", "add", ns)
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", ns)
        _ip("link", "set", outer, "master", self.bridge)
        _ip("link", "set", outer, "up")
        _ip("-n", ns, "addr", "add", f"{SUBNET}.{octet}/24", "dev", inner)
        _ip("-n", ns, "link", "set", inner, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        host = Host(name, f"{SUBNET}.{octet}", ns, outer)
        self.hosts[name] = host
        return host

    def cut(self, host: Host) -> None:
        _ip("link", "set", host.link, "down")

    def restore(self, host: Host) -> None:
        _ip("link", "set", host.link, "up")

    def run(self, host: Host, args: Sequence[str], log_dir: Path) -> subprocess.Popen[bytes]:
        log = open(log_dir / f"{host.name}.log", "ab")  # noqa: SIM115 - closed in close()
        popen = subprocess.Popen(
            ["ip", "netns", "exec", host.namespace, PYTHON, *args],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append((host.name, popen, log))
        return popen

    def close(self) -> None:
        for _name, popen, _log in self.procs:
            if popen.poll() is None:
                popen.terminate()
        for _name, popen, log in self.procs:
            try:
                popen.wait(10)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(5)
            log.close()
        for host in self.hosts.values():
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
            subprocess.run(["ip", "link", "del", host.link], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


@pytest.fixture
def network() -> Iterator[Network]:
    net = Network(tag=f"{os.getpid() % 10000}")
    try:
        yield net
    finally:
        net.close()


def _log_tail(log_dir: Path) -> str:
    return "\n".join(
        f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:])
        for p in sorted(log_dir.glob("*.log"))
    )


def _ready(url: str) -> bool:
    with contextlib.closing(grpcclient.InferenceServerClient(url)) as client:
        try:
            return bool(client.is_model_ready("work", client_timeout=1.0))
        except Exception:
            return False


def _serving(calls: list[Call]) -> set[int]:
    return {c.pid for c in calls if c.status == OK}


@pytest.mark.timeout(240)
def test_worker_host_cut_restored_and_added(
    network: Network, fault_repo: Path, tmp_path: Path, chaos: Chaos
) -> None:
    keys = init_keys(tmp_path / "keys").root
    logs = tmp_path / "logs"
    logs.mkdir()
    broker = network.add_host("b", 2)
    frontends = [network.add_host(f"f{i}", 3 + i) for i in range(2)]
    workers = [network.add_host(f"w{i}", 5 + i) for i in range(2)]
    fe_ep = f"tcp://{broker.address}:{FRONTEND_FABRIC_PORT}"
    wk_ep = f"tcp://{broker.address}:{WORKER_FABRIC_PORT}"
    common = ["--heartbeat-interval-s", str(HEARTBEAT_INTERVAL_S),
              "--heartbeat-liveness", str(LIVENESS), "--fabric-keys", str(keys)]  # fmt: skip

    # Off loopback, a tier without keys refuses to start (and says why in one line).
    refused = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            workers[0].namespace,
            PYTHON,
            "-m",
            "worker",
            "--broker",
            wk_ep,
            "--model-repository",
            str(fault_repo),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert "--insecure-fabric" in refused.stderr, refused.stderr[-2000:]

    def start_worker(host: Host) -> subprocess.Popen[bytes]:
        return network.run(
            host,
            [
                "-m",
                "worker",
                "--broker",
                wk_ep,
                "--model-repository",
                str(fault_repo),
                "--device",
                "cpu",
                "--torch-threads",
                "1",
                *common,
            ],
            logs,
        )

    network.run(
        broker, ["-m", "broker", "--frontend-bind", fe_ep, "--worker-bind", wk_ep, *common], logs
    )
    for host in frontends:
        network.run(
            host,
            [
                "-m",
                "frontend",
                "--host",
                "0.0.0.0",
                "--port",
                str(GRPC_PORT),
                "--broker",
                fe_ep,
                *common,
            ],
            logs,
        )
    worker_procs = [start_worker(h) for h in workers]
    urls = [f"{h.address}:{GRPC_PORT}" for h in frontends]
    for url in urls:
        wait_for(lambda url=url: _ready(url), timeout_s=90, what=f"work ready via {url}")  # type: ignore[misc]

    loads = [
        ClosedLoop(url, "work", concurrency=8, timeout_s=CALL_TIMEOUT_S, seed=i).start()
        for i, url in enumerate(urls)
    ]

    def all_calls() -> list[Call]:
        return [c for load in loads for c in load.calls]

    def wait_calls(what: str, cond: object, timeout_s: float = 60.0) -> None:
        wait_for(cond, timeout_s=timeout_s, what=what, interval_s=0.05)  # type: ignore[arg-type]

    try:
        pids = {p.pid for p in worker_procs}
        # `ip netns exec` execs python: the Popen pid is the worker's pid.
        wait_calls("both worker hosts serving", lambda: pids <= _serving(all_calls()))

        cut_at = time.monotonic()
        network.cut(workers[0])
        wait_calls(
            "300 calls answered after the cut was detected",
            lambda: len(between(all_calls(), cut_at + DETECT_S + 1.0, time.monotonic())) >= 300,
        )
        after_cut = between(all_calls(), cut_at + DETECT_S + 1.0, time.monotonic())
        assert _serving(after_cut) == {worker_procs[1].pid}

        restored_at = time.monotonic()
        network.restore(workers[0])
        wait_calls(
            "the restored worker host serving again",
            lambda: worker_procs[0].pid in _serving(between(all_calls(), restored_at, 1e12)),
        )

        added_host = network.add_host("w2", 7)
        added = start_worker(added_host)
        log = logs / f"{added_host.name}.log"
        wait_for(
            lambda: " serves " in log.read_text(errors="replace"),
            timeout_s=90,
            what="the added worker registering with the broker",
        )
        registered_at = time.monotonic()
        wait_calls(
            "the added worker host serving",
            lambda: added.pid in _serving(between(all_calls(), registered_at - 5, 1e12)),
            timeout_s=30,
        )
        first = min(c.ended_s for c in all_calls() if c.pid == added.pid and c.status == OK)
        join_s = max(0.0, first - registered_at)
    except BaseException:
        for load in loads:
            with contextlib.suppress(BaseException):
                load.stop()
        print(_log_tail(logs))
        raise
    calls = [c for load in loads for c in load.stop()]
    rec = chaos.record(
        "multi-host: cut 1 of 2 worker hosts, restore, add a third (2 frontend hosts, CURVE)",
        calls,
        notes=f"added worker served {join_s:.2f} s after registering",
    )
    assert not failures(calls), f"{rec}\n{_log_tail(logs)}"
    assert join_s <= JOIN_WITHIN_S, f"the added worker host first served after {join_s:.2f} s"

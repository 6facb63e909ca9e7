"""The process plan: ports per broker pair, every broker given to every frontend and worker,
metrics ports on by default and off with 0, and the one-line port check."""

from __future__ import annotations

import socket

import pytest

from supervisor.cli import check_ports, parse_args
from supervisor.plan import Options, Tier, build_plan, duplicate_ports


def arg(args: tuple[str, ...], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_two_brokers_use_consecutive_port_pairs_and_everyone_gets_both() -> None:
    plan = build_plan(Options(brokers=2, workers=2, frontends=2))
    brokers = [s for s in plan if s.tier is Tier.BROKER]
    assert [arg(b.args, "--frontend-bind") for b in brokers] == [
        "tcp://127.0.0.1:5555",
        "tcp://127.0.0.1:5557",
    ]
    assert [arg(b.args, "--worker-bind") for b in brokers] == [
        "tcp://127.0.0.1:5556",
        "tcp://127.0.0.1:5558",
    ]
    for spec in plan:
        if spec.tier is Tier.FRONTEND:
            assert arg(spec.args, "--broker") == "tcp://127.0.0.1:5555,tcp://127.0.0.1:5557"
            assert arg(spec.args, "--port") == "8001"
        if spec.tier is Tier.WORKER:
            assert arg(spec.args, "--broker") == "tcp://127.0.0.1:5556,tcp://127.0.0.1:5558"
    assert [s.name for s in plan] == [
        "broker-0", "broker-1", "worker-0", "worker-1", "frontend-0", "frontend-1",
    ]  # fmt: skip


def test_metrics_ports_consecutive_from_8002_with_the_first_frontend_first() -> None:
    plan = build_plan(Options(workers=2, frontends=2))
    by_name = {s.name: s.metrics_port for s in plan}
    assert by_name["frontend-0"] == 8002
    assert sorted(by_name.values()) == list(range(8002, 8002 + len(plan)))
    for spec in plan:
        assert arg(spec.args, "--metrics-port") == str(spec.metrics_port)
    assert duplicate_ports(plan) == []


def test_metrics_off() -> None:
    plan = build_plan(Options(metrics_port=0, workers=3))
    assert all("--metrics-port" not in s.args and s.metrics_port == 0 for s in plan)
    assert all("--no-metrics" in s.args for s in plan)


def test_shared_grpc_port_checked_once() -> None:
    plan = build_plan(Options(frontends=3))
    grpc_uses = [u for s in plan for u in s.ports if u.what == "gRPC"]
    assert len(grpc_uses) == 1


def test_overlapping_ranges_are_reported() -> None:
    plan = build_plan(Options(brokers=2, broker_frontend_port=5555, broker_worker_port=5557))
    assert duplicate_ports(plan) == [5557]
    assert check_ports(plan) == "run: port 5557 would be used twice; move the port ranges apart"


def test_zero_replicas_refused() -> None:
    with pytest.raises(ValueError, match="workers must be at least 1"):
        build_plan(Options(workers=0))


def test_port_in_use_is_one_line_naming_it() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        plan = build_plan(Options(port=port, metrics_port=0, broker_frontend_port=port + 100,
                                  broker_worker_port=port + 101))  # fmt: skip
        problem = check_ports(plan)
    assert problem is not None and "\n" not in problem
    assert problem.startswith(f"run: port {port} (frontend-0 gRPC, 127.0.0.1) is already in use")


def test_models_path_made_absolute(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(str(tmp_path))
    options, grace_s = parse_args(["--models", "repo", "--workers", "3", "--grace-s", "2"])
    assert options.models == f"{tmp_path}/repo"
    assert (options.workers, grace_s) == (3, 2.0)


def test_routing_file_goes_to_every_frontend_only(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(str(tmp_path))
    options, _ = parse_args(["--routing", "routing.yaml", "--frontends", "2"])
    assert options.routing == f"{tmp_path}/routing.yaml"
    plan = build_plan(options)
    for spec in plan:
        if spec.tier is Tier.FRONTEND:
            assert arg(spec.args, "--routing") == options.routing
        else:
            assert "--routing" not in spec.args
    assert all("--routing" not in s.args for s in build_plan(Options(frontends=2)))

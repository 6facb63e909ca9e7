"""Which processes ``make run`` starts, with which flags and ports: a pure function of options.

Brokers bind consecutive port pairs (``broker_frontend_port + 2i``, ``broker_worker_port + 2i``);
every frontend and every worker is given every broker. Frontends share the one gRPC port
(SO_REUSEPORT). Metrics ports, when on, are consecutive from ``metrics_port``: the first frontend
gets ``metrics_port`` itself (8002, as Triton), then the other frontends, brokers and workers;
off, every process gets ``--no-metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Tier(Enum):
    """Tiers in stop order: frontends drain first, brokers go last."""

    FRONTEND = 0
    WORKER = 1
    BROKER = 2


@dataclass(frozen=True)
class Options:
    models: str = "models"
    host: str = "127.0.0.1"
    port: int = 8001
    frontends: int = 1
    workers: int = 1
    brokers: int = 1
    broker_frontend_port: int = 5555
    broker_worker_port: int = 5556
    metrics_port: int = 8002  # 0 = no metrics endpoints
    fabric_keys: str = ""  # CURVE key directory given to every tier; "" = plain text (loopback)
    extra_worker_args: tuple[str, ...] = ()
    extra_frontend_args: tuple[str, ...] = ()
    extra_broker_args: tuple[str, ...] = ()
    worker_devices: tuple[str, ...] = ()  # worker i: --device worker_devices[i]; () = default
    routing: str = ""  # routing file given to every frontend (--routing); "" = none


@dataclass(frozen=True)
class PortUse:
    host: str
    port: int
    what: str


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    tier: Tier
    args: tuple[str, ...]  # after ``python``
    ports: tuple[PortUse, ...]
    metrics_port: int = 0


def _check(o: Options) -> None:
    for what, n in (("frontends", o.frontends), ("workers", o.workers), ("brokers", o.brokers)):
        if n < 1:
            raise ValueError(f"{what} must be at least 1, got {n}")


def build_plan(o: Options) -> list[ProcessSpec]:
    """Every process to start, brokers first (the others connect to them)."""
    _check(o)
    loopback = "127.0.0.1"
    fe_eps = [f"tcp://{loopback}:{o.broker_frontend_port + 2 * i}" for i in range(o.brokers)]
    wk_eps = [f"tcp://{loopback}:{o.broker_worker_port + 2 * i}" for i in range(o.brokers)]
    next_metrics = iter(range(o.metrics_port, o.metrics_port + 1_000))
    keys = ("--fabric-keys", o.fabric_keys) if o.fabric_keys else ()
    routing = ("--routing", o.routing) if o.routing else ()

    def metrics() -> tuple[list[str], tuple[PortUse, ...], int]:
        if not o.metrics_port:  # the tiers serve metrics unless told not to
            return ["--no-metrics"], (), 0
        port = next(next_metrics)
        return ["--metrics-port", str(port)], (PortUse(loopback, port, "metrics"),), port

    frontends: list[ProcessSpec] = []
    for i in range(o.frontends):
        m_args, m_ports, m_port = metrics()
        grpc_port = PortUse(o.host, o.port, "gRPC")
        args = ("-m", "frontend", "--host", o.host, "--port", str(o.port),
                "--broker", ",".join(fe_eps), "--reuse-port", *keys, *routing, *m_args,
                *o.extra_frontend_args)  # fmt: skip
        # The shared gRPC port is checked once, with the first frontend.
        ports = (grpc_port, *m_ports) if i == 0 else m_ports
        frontends.append(ProcessSpec(f"frontend-{i}", Tier.FRONTEND, args, ports, m_port))
    brokers: list[ProcessSpec] = []
    for i in range(o.brokers):
        m_args, m_ports, m_port = metrics()
        fe_port, wk_port = o.broker_frontend_port + 2 * i, o.broker_worker_port + 2 * i
        args = ("-m", "broker", "--frontend-bind", fe_eps[i], "--worker-bind", wk_eps[i],
                *keys, *m_args, *o.extra_broker_args)  # fmt: skip
        ports = (
            PortUse(loopback, fe_port, "broker frontend endpoint"),
            PortUse(loopback, wk_port, "broker worker endpoint"),
            *m_ports,
        )
        brokers.append(ProcessSpec(f"broker-{i}", Tier.BROKER, args, ports, m_port))
    workers: list[ProcessSpec] = []
    for i in range(o.workers):
        m_args, m_ports, m_port = metrics()
        device = ("--device", o.worker_devices[i]) if i < len(o.worker_devices) else ()
        args = ("-m", "worker", "--broker", ",".join(wk_eps), "--model-repository", o.models,
                *keys, *m_args, *device, *o.extra_worker_args)  # fmt: skip
        workers.append(ProcessSpec(f"worker-{i}", Tier.WORKER, args, m_ports, m_port))
    return [*brokers, *workers, *frontends]


def duplicate_ports(plan: list[ProcessSpec]) -> list[int]:
    """Ports two processes of the plan would both bind (overlapping port ranges)."""
    seen: set[int] = set()
    dup: list[int] = []
    for spec in plan:
        for use in spec.ports:
            if use.port in seen:
                dup.append(use.port)
            seen.add(use.port)
    return dup

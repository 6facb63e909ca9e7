"""A docker compose project of the repository's docker-compose.yml, driven from a test.

``ComposeProject`` runs ``docker compose`` (or ``docker-compose``) under its own project name
and free host ports, lists each service's containers, reads a container's Prometheus metrics
over the Docker network (the host reaches container addresses directly on Linux), waits for
health checks, and gives the last log lines of every container for failure reports.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench.lifecycle import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
POLL_INTERVAL_S = 0.25
LOG_TAIL_LINES = 30
METRICS_PORTS = {"broker": 8003, "frontend": 8002, "worker": 8004}
"""Each tier's ``--metrics-port`` in docker-compose.yml."""
HTTP_TIMEOUT_S = 5.0


def compose_command() -> list[str]:
    """``$COMPOSE`` (as the Makefile passes it), else ``docker compose`` where the plugin is
    there, else ``docker-compose``."""
    given = os.environ.get("COMPOSE")
    if given:
        return shlex.split(given)
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return ["docker", "compose"] if plugin.returncode == 0 else ["docker-compose"]


def docker_available() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0
    except FileNotFoundError:
        return False


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(POLL_INTERVAL_S)


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    service: str


@dataclass
class ComposeProject:
    """One compose project; ``env`` is given to every compose command (ports, log level)."""

    name: str
    lb_port: int = field(default_factory=free_port)
    prometheus_port: int = field(default_factory=free_port)
    command: list[str] = field(default_factory=compose_command)

    @property
    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            FABRICSERVE_PORT=str(self.lb_port),
            PROMETHEUS_PORT=str(self.prometheus_port),
        )

    @property
    def lb_url(self) -> str:
        return f"127.0.0.1:{self.lb_port}"

    def compose(self, *args: str, timeout_s: float = 600.0) -> str:
        argv = [*self.command, "-f", str(COMPOSE_FILE), "-p", self.name, *args]
        done = subprocess.run(
            argv, cwd=REPO_ROOT, env=self.env, capture_output=True, text=True, timeout=timeout_s
        )
        if done.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)} failed ({done.returncode}):\n{done.stderr}")
        return done.stdout

    def up(self, **scale: int) -> None:
        flags = [f"--scale={service}={n}" for service, n in scale.items()]
        self.compose("up", "-d", *flags)

    def scale(self, service: str, replicas: int) -> None:
        """Change one service's replica count at run time, leaving the others as they are."""
        self.compose("up", "-d", "--no-deps", "--no-recreate", f"--scale={service}={replicas}",
                     service)  # fmt: skip

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "--timeout=5")

    def containers(self, service: str, *, running_only: bool = True) -> list[Container]:
        argv = [
            "docker", "ps", "--no-trunc", "--format", "{{.ID}} {{.Names}}",
            "--filter", f"label=com.docker.compose.project={self.name}",
            "--filter", f"label=com.docker.compose.service={service}",
        ]  # fmt: skip
        if not running_only:
            argv.append("--all")
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        found = [Container(*line.split(" ", 1), service) for line in out.splitlines() if line]
        return sorted(found, key=lambda c: c.name)

    def inspect(self, container: Container) -> dict[str, object]:
        out = subprocess.run(
            ["docker", "inspect", container.id], capture_output=True, text=True, check=True
        ).stdout
        state: dict[str, object] = json.loads(out)[0]
        return state

    def address(self, container: Container) -> str:
        networks = self.inspect(container)["NetworkSettings"]["Networks"]  # type: ignore[index]
        return str(next(iter(networks.values()))["IPAddress"])

    def health(self, container: Container) -> str:
        state = self.inspect(container)["State"]
        health = state.get("Health")  # type: ignore[attr-defined]
        return str(health["Status"]) if health else "none"

    def exit_code(self, container: Container) -> int:
        state = self.inspect(container)["State"]
        return int(state["ExitCode"])  # type: ignore[index]

    def metrics(self, container: Container) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of the container's Prometheus endpoint, by name and labels."""
        url = f"http://{self.address(container)}:{METRICS_PORTS[container.service]}/metrics"
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as reply:
            text = reply.read().decode()
        samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, frozenset(s.labels.items()))] = s.value
        return samples

    def metric_sum(self, container: Container, name: str, **labels: str) -> float:
        """The sum of ``name`` over the samples whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.metrics(container).items() if n == name and want <= ls)

    def logs(self) -> str:
        parts = []
        for service in ("broker", "frontend", "worker", "lb", "keys", "models"):
            for c in self.containers(service, running_only=False):
                out = subprocess.run(
                    ["docker", "logs", "--tail", str(LOG_TAIL_LINES), c.id],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                parts.append(f"--- {c.name}\n{out.stdout}{out.stderr}")
        return "\n".join(parts)

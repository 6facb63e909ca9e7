"""docker-compose.yml and the image build, checked offline (no docker): what the design needs
of every service, and the dependency list that the images install before the source."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO_ROOT / "deploy" / "docker"
TIERS = ("broker", "frontend", "worker", "worker-gpu")
METRICS_PORTS = {"broker": 8003, "frontend": 8002, "worker": 8004, "worker-gpu": 8004}


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def depends(service: dict[str, Any], on: str) -> str | None:
    d = service.get("depends_on", {})
    if isinstance(d, list):
        return "service_started" if on in d else None
    condition: str | None = d.get(on, {}).get("condition")
    return condition


def test_tiers_run_with_curve_keys_mounted_read_only(services: dict[str, dict[str, Any]]) -> None:
    for name in TIERS:
        s = services[name]
        assert s["environment"]["FABRIC_KEYS"] == "/keys", name
        assert "keys:/keys:ro" in s["volumes"], name
        assert depends(s, "keys") == "service_completed_successfully", name
        assert not any("insecure" in str(v).lower() for v in s["environment"].values()), name
    assert services["keys"]["entrypoint"] == ["python", "-m", "fabric.curve", "init", "/keys"]
    assert services["keys"]["volumes"] == ["keys:/keys"]


def test_images_follow_the_naming_convention(services: dict[str, dict[str, Any]]) -> None:
    for name in ("broker", "frontend", "worker"):
        assert services[name]["image"] == f"fabricserve-{name}"
    assert services["worker-gpu"]["image"] == "fabricserve-worker:cuda"


def test_metrics_are_served_on_each_tier_port(services: dict[str, dict[str, Any]]) -> None:
    for name in TIERS:
        args = services[name]["command"]
        assert f"--metrics-port={METRICS_PORTS[name]}" in args, name
        assert "--metrics-host=0.0.0.0" in args, name


def test_every_long_running_service_has_a_health_check(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in (*TIERS, "lb"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    assert "probe_grpc.py" in " ".join(services["frontend"]["healthcheck"]["test"])


def test_only_the_balancer_and_prometheus_publish_ports(
    services: dict[str, dict[str, Any]],
) -> None:
    published = {name for name, s in services.items() if s.get("ports")}
    default = {name for name in published if "profiles" not in services[name]}
    assert default == {"lb", "prometheus"}
    assert services["lb"]["ports"] == ["${FABRICSERVE_PORT:-8001}:8001"]
    # Grafana and Jaeger come only with their profile; Jaeger publishes its UI, not OTLP.
    assert published - default == {"grafana", "jaeger"}
    assert all(services[n]["profiles"] == ["observability"] for n in ("grafana", "jaeger"))
    assert services["jaeger"]["ports"] == ["${JAEGER_UI_PORT:-16686}:16686"]


def test_workers_share_the_model_repository(services: dict[str, dict[str, Any]]) -> None:
    for name in ("worker", "worker-gpu"):
        assert "${MODEL_REPOSITORY:-models}:/models:ro" in services[name]["volumes"]
        assert "--model-repository=/models" in services[name]["command"]
    assert services["models"]["volumes"] == ["models:/models"]


def test_gpu_workers_reserve_a_gpu_in_their_own_profile(
    services: dict[str, dict[str, Any]],
) -> None:
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["count"] == 1
    assert "profiles" not in services["worker"]


def test_drain_fits_in_the_stop_grace_period(services: dict[str, dict[str, Any]]) -> None:
    # The tiers' default drains: broker 5 s, frontend 5 s, worker 10 s (*/config.py).
    drain_s = {"broker": 5, "frontend": 5, "worker": 10}
    for name, drain in drain_s.items():
        assert int(services[name]["stop_grace_period"].rstrip("s")) > drain, name


def test_dependencies_are_read_from_pyproject(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "pyproject_deps", DOCKER_DIR / "pyproject_deps.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "x"\ndependencies = ["a>=1", "b"]\n'
        '[project.optional-dependencies]\nworker = ["torch>=2"]\n'
    )
    assert module.requirements(pyproject, []) == ["a>=1", "b"]
    assert module.requirements(pyproject, ["worker"]) == ["a>=1", "b", "torch>=2"]
    reqs = module.requirements(REPO_ROOT / "pyproject.toml", [])
    assert any(r.startswith("grpcio") for r in reqs)
    assert not any(r.startswith("torch") for r in reqs)


def test_images_run_as_uid_10001_under_tini() -> None:
    for dockerfile in ("Dockerfile", "lb.Dockerfile", "prometheus.Dockerfile"):
        text = (DOCKER_DIR / dockerfile).read_text()
        entrypoints = [line for line in text.splitlines() if line.startswith("ENTRYPOINT")]
        users = [line for line in text.splitlines() if line.startswith("USER")]
        assert entrypoints and all('"/usr/bin/tini", "--"' in e for e in entrypoints), dockerfile
        assert users and all(u == "USER 10001:10001" for u in users), dockerfile
        assert len(users) == len(entrypoints), dockerfile

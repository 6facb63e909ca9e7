"""The Kubernetes manifests: each overlay renders with `kubectl kustomize` and validates against
the Kubernetes schemas offline (kubernetes-validate, strict), and says what the design needs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
DRAIN_S = {"broker": 5, "frontend": 5, "worker": 10}
"""The tiers' default drain/shutdown grace (*/config.py): pods must get longer than that."""


def render(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(KUBECTL), "kustomize", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(K8S / "overlays" / request.param)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]


def test_every_object_validates_strictly(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _name, docs = overlay
    for doc in docs:
        kubernetes_validate.validate(doc, "1.32.0", strict=True)


def test_tiers_have_services_workloads_and_budgets(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _name, docs = overlay
    assert set(by_kind(docs, "Service")) == {"broker", "frontend"}
    assert set(by_kind(docs, "Deployment")) == {"frontend", "worker"}
    assert set(by_kind(docs, "StatefulSet")) == {"broker"}
    assert set(by_kind(docs, "PodDisruptionBudget")) == {"broker", "frontend", "worker"}
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["frontend"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_frontend_probes_speak_grpc(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _name, docs = overlay
    spec = dict(pod_specs(docs))["frontend"]
    container = spec["containers"][0]
    assert container["readinessProbe"]["grpc"]["port"] == 8001
    assert container["livenessProbe"]["grpc"]["port"] == 8001


def test_every_container_is_non_root_and_locked_down(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _name, docs = overlay
    for name, spec in pod_specs(docs):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert "limits" in c["resources"] and "requests" in c["resources"], (name, c["name"])


def test_grace_periods_cover_the_drain(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _name, docs = overlay
    for name, spec in pod_specs(docs):
        assert spec["terminationGracePeriodSeconds"] > DRAIN_S[name], name


def test_fabric_runs_with_curve_keys_each_tier_only_its_own(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _name, docs = overlay
    wanted = {
        "broker": {"broker.key_secret", "allow/frontends/frontend.key", "allow/workers/worker.key"},
        "frontend": {"broker.key", "frontend.key_secret"},
        "worker": {"broker.key", "worker.key_secret"},
    }
    for name, spec in pod_specs(docs):
        container = spec["containers"][0]
        assert "--fabric-keys=/keys" in container["args"], name
        assert not any("insecure" in a for a in container["args"]), name
        keys = next(v for v in spec["volumes"] if v["name"] == "keys")
        items = {i["path"] for s in keys["projected"]["sources"] for i in s["secret"]["items"]}
        assert items == wanted[name], name


def test_network_policy_admits_only_frontends_and_workers_to_the_fabric(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _name, docs = overlay
    policy = by_kind(docs, "NetworkPolicy")["broker-ingress"]
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "broker"
    rules = {
        r["ports"][0]["port"]: r.get("from", [{}])[0]
        .get("podSelector", {})
        .get("matchLabels", {})
        .get("app.kubernetes.io/component")
        for r in policy["spec"]["ingress"]
    }
    assert rules == {5555: "frontend", 5556: "worker", 8003: None}


def test_gpu_overlay_requests_gpus_and_cpu_overlay_none() -> None:
    for overlay, gpus in (("gpu", 1), ("cpu", None)):
        worker = dict(pod_specs(render(K8S / "overlays" / overlay)))["worker"]
        container = worker["containers"][0]
        assert container["resources"]["limits"].get("nvidia.com/gpu") == gpus, overlay
        device = {e["name"]: e["value"] for e in container["env"]}["WORKER_DEVICE"]
        assert device == ("cuda" if gpus else "cpu")


def test_keda_component_scales_workers_on_queue_depth(tmp_path: Path) -> None:
    overlay = tmp_path / "with-keda"
    overlay.mkdir()
    rel = os.path.relpath(K8S, overlay)
    (overlay / "kustomization.yaml").write_text(
        f"resources: [{rel}/overlays/cpu]\ncomponents: [{rel}/components/keda]\n"
    )
    docs = render(overlay)
    scaled = by_kind(docs, "ScaledObject")["worker"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "worker"
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert "fabric_broker_queue_depth" in trigger["metadata"]["query"]


def test_make_keys_prints_a_valid_secret_with_every_key_the_pods_mount() -> None:
    out = subprocess.run(
        ["sh", str(K8S / "make-keys.sh")],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    ).stdout
    secret = yaml.safe_load(out)
    kubernetes_validate.validate(secret, "1.32.0", strict=True)
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == "fabric-keys"
    mounted = {
        i["key"]
        for _name, spec in pod_specs(render(K8S / "overlays" / "cpu"))
        for v in spec["volumes"]
        if v["name"] == "keys"
        for s in v["projected"]["sources"]
        for i in s["secret"]["items"]
    }
    assert mounted == set(secret["data"])

"""Deployment files checked by the real tools: `promtool` (Debian's `prometheus` package) validates the Prometheus
config, both copies of the alert rules and their unit tests; `kubectl kustomize` renders every manifest, and the
rendered objects are checked for what breaks in production (probes, resource requests, the Secret they reference,
the worker's GPU). Each test skips with the reason where its tool is missing; `.ci/run` installs both."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
K8S = ROOT / "deploy" / "k8s"


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (Debian package {package}; .ci/run installs it)")
    return path


def run(*command: str, cwd: Path | None = None) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    kubectl = tool("kubectl", "kubectl")
    return [doc for doc in yaml.safe_load_all(run(kubectl, "kustomize", str(K8S))) if doc]


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_specs(objects: list[dict]) -> dict[str, dict]:
    return {
        name: o["spec"]["template"]["spec"]
        for kind in ("Deployment", "StatefulSet")
        for name, o in by_kind(objects, kind).items()
    }


# ---------------------------------------------------------------- promtool


def test_promtool_accepts_the_prometheus_config_and_its_rules():
    promtool = tool("promtool", "prometheus")
    out = run(promtool, "check", "config", "prometheus.yml", cwd=PROMETHEUS)
    assert "1 rule files found" in out and "SUCCESS: 3 rules found" in out


def test_alert_rules_fire_when_they_should_and_not_before():
    promtool = tool("promtool", "prometheus")
    run(promtool, "test", "rules", "alerts_test.yml", cwd=PROMETHEUS)


def test_promtool_accepts_the_rendered_prometheusrule(rendered, tmp_path):
    promtool = tool("promtool", "prometheus")
    (rule,) = by_kind(rendered, "PrometheusRule").values()
    path = tmp_path / "k8s-rules.yml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    assert "SUCCESS: 3 rules found" in run(promtool, "check", "rules", str(path))


# ---------------------------------------------------------------- kubectl kustomize


def test_kustomize_renders_every_listed_manifest(rendered):
    kinds = {o["kind"] for o in rendered}
    assert {"Namespace", "ConfigMap", "Secret", "Service", "Deployment", "StatefulSet", "HorizontalPodAutoscaler",
            "PrometheusRule", "ServiceMonitor"} <= kinds  # fmt: skip
    namespaces = {o["metadata"].get("namespace") for o in rendered if o["kind"] != "Namespace"}
    assert namespaces == {"routet2i"}, "every object lands in the kustomization's namespace"


def test_every_container_has_probes_requests_and_a_memory_limit(rendered):
    for name, spec in pod_specs(rendered).items():
        for container in spec["containers"]:
            where = f"{name}/{container['name']}"
            assert container.get("readinessProbe") and container.get("livenessProbe"), f"{where} lacks a probe"
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), f"{where} lacks cpu/memory requests"
            assert "memory" in resources.get("limits", {}), f"{where} has no memory limit (an OOM takes the node)"
            ports = {p.get("name") for p in container.get("ports", [])} | {p["containerPort"] for p in
                                                                            container.get("ports", [])}  # fmt: skip
            for probe in (container["readinessProbe"], container["livenessProbe"]):
                action = probe.get("httpGet") or probe.get("tcpSocket")
                if action:
                    assert action["port"] in ports, f"{where} probes port {action['port']}, which it does not open"


def test_secret_references_resolve_in_the_rendered_objects(rendered):
    secrets = by_kind(rendered, "Secret")
    configmaps = by_kind(rendered, "ConfigMap")
    referenced = 0
    for name, spec in pod_specs(rendered).items():
        for container in spec["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced += 1
                    assert ref["name"] in secrets, f"{name} reads Secret {ref['name']}, which is not rendered"
                    data = {**secrets[ref["name"]].get("stringData", {}), **secrets[ref["name"]].get("data", {})}
                    assert ref["key"] in data, f"{name} reads key {ref['key']} missing from {ref['name']}"
        for volume in spec.get("volumes", []):
            if "configMap" in volume:  # kustomize renames generated ConfigMaps with a hash suffix
                assert volume["configMap"]["name"] in configmaps, f"{name} mounts a ConfigMap that is not rendered"
    assert referenced >= 3, "the gateway's two tokens and the worker's token come from the Secret"


def test_the_worker_asks_for_one_gpu_the_way_kubernetes_schedules_it(rendered):
    specs = pod_specs(rendered)
    (worker,) = specs["routet2i-worker"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    for name, spec in specs.items():
        for container in spec["containers"]:
            resources = container.get("resources", {})
            requested = resources.get("requests", {}).get("nvidia.com/gpu")
            # Extended resources are scheduled from limits; a request must equal the limit or be left out.
            assert requested in (None, resources.get("limits", {}).get("nvidia.com/gpu")), name

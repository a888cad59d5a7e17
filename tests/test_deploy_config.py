"""Deployment files that cannot drift silently: they parse, every file they name exists, every setting they
pass is a real `Settings` field, and every metric the dashboard and alerts query is one a live gateway exports."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
EXTRA_ENV = {"ROUTET2I_CONFIG", "ROUTET2I_WORKER_TOKEN"}  # read outside Settings (config file, worker token)
METRIC = re.compile(r"\b(routet2i_[a-z0-9_]+)")


def load_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def compose() -> dict:
    return load_docs(DEPLOY / "docker-compose.yml")[0]


def k8s_objects() -> list[dict]:
    kustomization = load_docs(K8S / "kustomization.yaml")[0]
    return [doc for resource in kustomization["resources"] for doc in load_docs(K8S / resource)]


def containers(objects: list[dict]) -> list[dict]:
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    return [c for o in workloads for c in o["spec"]["template"]["spec"]["containers"]]


def settings_from(path: Path, monkeypatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("ROUTET2I_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("ROUTET2I_CONFIG", str(path))
    return Settings()


# ---------------------------------------------------------------- parsing and references


def test_every_yaml_and_json_file_parses():
    files = sorted(DEPLOY.rglob("*.y*ml")) + sorted(DEPLOY.rglob("*.json"))
    assert len(files) >= 15
    for path in files:
        docs = json.loads(path.read_text()) if path.suffix == ".json" else load_docs(path)
        assert docs, f"{path} is empty"


def test_compose_references_existing_files_and_real_settings(monkeypatch):
    spec = compose()
    assert {"gateway", "worker", "redis", "prometheus", "grafana"} <= set(spec["services"])
    build = spec["services"]["gateway"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    for name, service in spec["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"compose service {name} mounts missing {source}"
        for key in service.get("environment", {}):
            if key.startswith("ROUTET2I_"):
                assert key in EXTRA_ENV or key.removeprefix("ROUTET2I_").lower() in Settings.model_fields, key
    gateway = spec["services"]["gateway"]
    config = next(v for v in gateway["volumes"] if v.split(":")[1] == gateway["environment"]["ROUTET2I_CONFIG"])
    settings = settings_from(DEPLOY / config.split(":")[0], monkeypatch)  # extra="forbid": unknown keys fail
    assert settings.cloud_kind == "worker" and settings.edge_model
    assert gateway["environment"]["ROUTET2I_REDIS_URL"].startswith("redis://redis:")
    worker = spec["services"]["worker"]
    assert worker["command"][:2] == ["routet2i", "worker"]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_prometheus_and_grafana_wiring_matches_compose():
    spec = compose()
    mounts = {v.split(":")[1]: DEPLOY / v.split(":")[0] for s in spec["services"].values() for v in s.get("volumes", [])
              if v.startswith(".")}  # fmt: skip
    prometheus = load_docs(DEPLOY / "prometheus" / "prometheus.yml")[0]
    config_dir = next(Path(m).parent for m, src in mounts.items() if src == DEPLOY / "prometheus" / "prometheus.yml")
    for rule_file in prometheus["rule_files"]:
        in_container = str(config_dir / rule_file)  # Prometheus resolves rule files next to its config
        assert in_container in mounts and mounts[in_container].is_file(), rule_file
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["gateway:8000"] and "8000:8000" in spec["services"]["gateway"]["ports"]
    provisioning = mounts["/etc/grafana/provisioning"]
    datasource = load_docs(provisioning / "datasources" / "prometheus.yml")[0]["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    provider = load_docs(provisioning / "dashboards" / "routet2i.yml")[0]["providers"][0]
    dashboards = mounts[provider["options"]["path"]]
    dashboard = json.loads((dashboards / "routet2i.json").read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]


def test_kustomize_resources_exist_and_objects_reference_each_other(monkeypatch):
    kustomization = load_docs(K8S / "kustomization.yaml")[0]
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    generated = {}
    for generator in kustomization["configMapGenerator"]:
        for entry in generator["files"]:
            key, _, file = entry.partition("=")
            assert (K8S / file).is_file(), file
            generated[generator["name"]] = key
    objects = k8s_objects()
    by_kind: dict[str, dict[str, dict]] = {}
    for o in objects:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "Secret", "ServiceMonitor", "StatefulSet"} <= set(
        by_kind
    )
    pod_labels = []
    for workload in [*by_kind["Deployment"].values(), *by_kind["StatefulSet"].values()]:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items(), workload["metadata"]["name"]
        pod_labels.append(labels)
        for volume in workload["spec"]["template"]["spec"].get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in generated
    for service in by_kind["Service"].values():
        assert any(service["spec"]["selector"].items() <= labels.items() for labels in pod_labels), service
    secret = next(iter(by_kind["Secret"].values()))
    for container in containers(objects):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"], env
            if env["name"].startswith("ROUTET2I_"):
                name = env["name"]
                assert name in EXTRA_ENV or name.removeprefix("ROUTET2I_").lower() in Settings.model_fields, name
    hpa = next(iter(by_kind["HorizontalPodAutoscaler"].values()))
    assert hpa["spec"]["scaleTargetRef"]["name"] in by_kind["Deployment"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    worker = by_kind["Deployment"]["routet2i-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    monitor = next(iter(by_kind["ServiceMonitor"].values()))
    monitored = [s for s in by_kind["Service"].values() if monitor["spec"]["selector"]["matchLabels"].items()
                 <= s["metadata"].get("labels", {}).items()]  # fmt: skip
    assert len(monitored) == 1
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in monitored[0]["spec"]["ports"]}
    settings = settings_from(K8S / "config" / "gateway.yaml", monkeypatch)
    assert settings.cloud_kind == "worker"
    rule = by_kind["PrometheusRule"]["routet2i"]
    assert rule["spec"] == load_docs(DEPLOY / "prometheus" / "alerts.yml")[0]  # one set of alerts, two formats


def test_dockerfile_mirrors_ci_and_runs_the_app_factory():
    text = (ROOT / "Dockerfile").read_text()
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()[:1] != "#"}
    for match in re.finditer(r"^COPY (?!--from)(.+)$", text, re.MULTILINE):
        for source in shlex.split(match.group(1))[:-1]:
            assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
            assert source not in ignored, f".dockerignore excludes {source}, which the Dockerfile copies"
    steps = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert steps.index('pip install "torch==${TORCH_VERSION}"') < steps.index('RUN pip install ".[fast]" ')
    assert re.search(r"^ARG TORCH_VERSION=2\.13\.0$", text, re.MULTILINE)
    assert re.search(r"^ARG VARIANT=cuda$", text, re.MULTILINE) and "FROM base-${VARIANT}" in text
    assert re.search(r"^USER 10001", text, re.MULTILINE) and "/healthz" in text.split("HEALTHCHECK", 1)[1]
    import gateway.app

    factory = re.search(r"uvicorn (\S+):(\S+) --factory", text)
    assert factory and factory.group(1) == "gateway.app" and callable(getattr(gateway.app, factory.group(2)))


# ---------------------------------------------------------------- queried metrics against a live /metrics


def queried_expressions() -> dict[str, str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "routet2i.json").read_text())
    exprs = {f"dashboard panel {p['title']!r}": t["expr"] for p in dashboard["panels"] for t in p["targets"]}
    for group in load_docs(DEPLOY / "prometheus" / "alerts.yml")[0]["groups"]:
        for rule in group["rules"]:
            exprs[f"alert {rule['alert']}"] = rule["expr"]
    return exprs


@pytest.fixture(scope="module")
def live_metrics(tmp_path_factory) -> str:
    from demo.tiny import build_tiny_sd_pipeline
    from gateway.app import create_app
    from tests.servers import LiveServer

    root = tmp_path_factory.mktemp("deploy")
    edge = build_tiny_sd_pipeline(root / "edge")
    settings = Settings(edge_model=str(edge), edge_device="cpu", cloud_kind="none", state_file=str(root / "s.json"))
    with LiveServer(create_app(settings)) as server:
        body = {"prompt": "a red bicycle", "size": "64x64", "num_inference_steps": 1}
        assert httpx.post(f"{server.url}/generate", json=body, timeout=60).status_code == 200
        # No cloud is configured: a forced cloud request falls back and counts a backend error (its labels).
        forced = httpx.post(f"{server.url}/generate", json={**body, "route": "cloud"}, timeout=60)
        assert forced.json()["route"]["reason"] == "fallback"
        return httpx.get(f"{server.url}/metrics", timeout=10).text


def test_every_metric_the_dashboard_and_alerts_query_is_exported(live_metrics):
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exported, labels = set(), {"le", "instance", "job"}
    for family in text_string_to_metric_families(live_metrics):
        exported |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
        for sample in family.samples:
            labels |= set(sample.labels)
    exprs = queried_expressions()
    assert len(exprs) >= 12
    for where, expr in exprs.items():
        names = set(METRIC.findall(expr))
        assert names, f"{where} queries no routet2i metric: {expr}"
        assert names <= exported, f"{where} queries {sorted(names - exported)}, which /metrics does not export"
        for clause in re.findall(r"\bby \(([^)]*)\)", expr) + re.findall(r"\{([^}]*)\}", expr):
            used = {part.split("=")[0].strip(" ~!") for part in clause.split(",") if part.strip()}
            assert used <= labels, f"{where} uses labels {sorted(used - labels)} that no routet2i metric has"
    queried = set().union(*(METRIC.findall(e) for e in exprs.values()))
    for required in ("routet2i_budget_cloud_fraction", "routet2i_budget_rho", "routet2i_budget_alpha",
                     "routet2i_requests_total", "routet2i_request_duration_seconds_bucket",
                     "routet2i_backend_errors_total", "routet2i_edge_queue_depth"):  # fmt: skip
        assert required in queried, f"the dashboard should show {required}"

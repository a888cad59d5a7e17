"""Scale-out over real processes: one Redis, a real cloud worker, gateway A (`uvicorn --workers 2` on the
app factory, Prometheus multiprocess) and gateway B (`routet2i serve`), one stream of real prompts across them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.budget_replay import DATA_DIR
from demo.processes import free_port, spawn, stop, wait_until_ready
from demo.stack import build_demo_models
from router_model.lab.data import read_prompts
from tests.servers import RedisServer

pytestmark = pytest.mark.slow

RHO, WINDOW, ADMIN = 0.3, 20, "scale-out-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@dataclass
class Cluster:
    redis: RedisServer
    a: str  # two uvicorn workers behind one port
    b: str  # one `routet2i serve` process
    multiproc_dir: Path
    processes: list[subprocess.Popen]
    logs: Path
    sent: dict[str, int] = field(default_factory=dict)  # /generate requests answered, per gateway URL

    def generate(self, url: str, prompt: str) -> httpx.Response:
        # A fresh connection per request, so the kernel spreads gateway A's requests over both workers.
        body = {"prompt": prompt, "size": "64x64", "num_inference_steps": 1}
        response = httpx.post(f"{url}/generate", json=body, timeout=60)
        self.sent[url] = self.sent.get(url, 0) + 1
        return response


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaleout")
    redis_server = RedisServer(root).start()
    edge, cloud = build_demo_models()  # the demo's tiny SD 2.1-class and SD3 pipelines, built once and reused
    worker_port, port_a, port_b = free_port(), free_port(), free_port()
    multiproc = root / "prometheus"
    multiproc.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith("ROUTET2I_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    base.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", ROUTET2I_WORKER_TOKEN="w")
    gateway_env = {
        **base, "ROUTET2I_EDGE_MODEL": str(edge), "ROUTET2I_EDGE_DEVICE": "cpu", "ROUTET2I_EDGE_DEFAULT_STEPS": "1",
        "ROUTET2I_CLOUD_KIND": "worker", "ROUTET2I_CLOUD_URL": f"http://127.0.0.1:{worker_port}",
        "ROUTET2I_CLOUD_TOKEN": "w", "ROUTET2I_REDIS_URL": redis_server.url, "ROUTET2I_REDIS_PREFIX": "scaleout",
        "ROUTET2I_REDIS_RETRY_S": "0.5", "ROUTET2I_ADMIN_TOKEN": ADMIN, "ROUTET2I_RHO": str(RHO),
        "ROUTET2I_DECISION_WINDOW": str(WINDOW), "ROUTET2I_SCORE_WINDOW": "100",
    }  # fmt: skip
    commands = {
        "worker": ([sys.executable, "-m", "gateway.cli", "worker", "--model", str(cloud), "--port", str(worker_port),
                    "--steps", "1", "--device", "cpu"], base),
        "a": ([sys.executable, "-m", "uvicorn", "gateway.app:app_from_env", "--factory", "--workers", "2",
               "--host", "127.0.0.1", "--port", str(port_a), "--log-level", "warning"],
              {**gateway_env, "ROUTET2I_STATE_FILE": str(root / "a.json"), "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}),
        "b": ([sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--port", str(port_b)],
              {**gateway_env, "ROUTET2I_STATE_FILE": str(root / "b.json")}),
    }  # fmt: skip
    processes, logs = {}, {}
    try:
        for name, (command, env) in commands.items():
            logs[name] = root / f"{name}.log"
            processes[name] = spawn(command, env=env, log=logs[name])
        urls = {"worker": f"http://127.0.0.1:{worker_port}", "a": f"http://127.0.0.1:{port_a}",
                "b": f"http://127.0.0.1:{port_b}"}  # fmt: skip
        for name, url in urls.items():
            wait_until_ready(url, processes[name], log=logs[name])
        yield Cluster(redis_server, urls["a"], urls["b"], multiproc, list(processes.values()), root)
    finally:
        stop(*processes.values())
        redis_server.stop()


@pytest.fixture(scope="module")
def low_score_prompts(cluster) -> list[str]:
    """Real COCO/Parti prompts the router says the cloud wins (the lowest 60 PRŜ of 400, scored by POST /route),
    shuffled: all of them want the cloud during the cold start (α = ρ), about ρ of them once α is live."""
    if not (DATA_DIR / "parti_prompts.tsv").exists():
        pytest.skip(f"prompt data not found under {DATA_DIR} (set ROUTET2I_DATA_DIR)")
    prompts = (
        read_prompts(DATA_DIR / "coco2014_val_captions_5k.tsv")[:200]
        + read_prompts(DATA_DIR / "parti_prompts.tsv")[:200]
    )
    with httpx.Client(base_url=cluster.b, timeout=30) as client:
        prs = [client.post("/route", json={"prompt": p}).json()["prs"] for p in prompts]
    lowest = np.argsort(prs)[:60]
    assert prs[lowest[-1]] < RHO  # every prompt of the stream wants the cloud while α is the cold-start ρ
    return [prompts[i] for i in np.random.default_rng(0).permutation(lowest)]


def metric_samples(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(
        v for (n, lab), v in samples.items() if n == name and all(dict(lab).get(k) == x for k, x in labels.items())
    )


def test_one_budget_holds_across_replicas_on_one_interleaved_stream(cluster, low_score_prompts):
    routes = []
    for i, prompt in enumerate(low_score_prompts):
        response = cluster.generate(cluster.a if i % 2 == 0 else cluster.b, prompt)
        assert response.status_code == 200, response.text
        routes.append(response.json()["route"])
    cloud = np.array([r["backend"] == "cloud" for r in routes])
    sums = np.concatenate([[0], np.cumsum(cloud)])
    per_window = [int(sums[s + WINDOW] - sums[s]) for s in range(len(cloud) - WINDOW + 1)]
    # The replicas share one window of 20, so together they get at most ⌊0.3·20⌋ = 6 cloud calls per 20
    # requests; two separate budgets would allow up to 12 (6 each in their own 10) during the cold start,
    # where every request wants the cloud and the cap refuses all but 6 of the first 20.
    assert max(per_window) <= int(RHO * WINDOW)
    assert cloud[:WINDOW].sum() == int(RHO * WINDOW)
    assert sum(r["reason"] == "budget" for r in routes[:WINDOW]) == WINDOW - int(RHO * WINDOW)
    assert cloud.sum() >= 0.2 * len(cloud)  # and the budget is spent
    snaps = [httpx.get(f"{url}/admin/budget", headers=AUTH, timeout=10).json() for url in (cluster.a, cluster.b)]
    assert snaps[0]["decisions"] == snaps[1]["decisions"] == WINDOW
    assert snaps[0]["cloud_calls"] == snaps[1]["cloud_calls"] == int(cloud[-WINDOW:].sum())


def test_admin_change_on_one_replica_shows_on_the_others(cluster):
    put = httpx.put(f"{cluster.b}/admin/budget", headers=AUTH, json={"rho": 0.55}, timeout=10)
    assert put.status_code == 200 and put.json()["rho"] == 0.55
    for _ in range(4):  # fresh connections: both of A's workers
        assert httpx.get(f"{cluster.a}/admin/budget", headers=AUTH, timeout=10).json()["rho"] == 0.55
        assert httpx.post(f"{cluster.a}/route", json={"prompt": "a red bicycle"}, timeout=10).json()["rho"] == 0.55
    put = httpx.put(f"{cluster.a}/admin/budget", headers=AUTH, json={"rho": RHO}, timeout=10)
    assert httpx.get(f"{cluster.b}/admin/budget", headers=AUTH, timeout=10).json()["rho"] == RHO


def test_metrics_add_up_across_workers(cluster):
    served_by = {p.name.split("_")[-1].split(".")[0] for p in cluster.multiproc_dir.glob("counter_*.db")}
    assert len(served_by) == 2, "both of gateway A's workers should have counted requests"
    for _ in range(4):  # whichever worker answers the scrape reports both workers' requests
        samples = metric_samples(cluster.a)
        assert total(samples, "routet2i_requests_total") == cluster.sent[cluster.a]
        assert total(samples, "routet2i_request_duration_seconds_count") == cluster.sent[cluster.a]
        assert total(samples, "routet2i_budget_store_up", store="redis") == 1
        assert total(samples, "routet2i_budget_rho") == RHO


def test_stopping_redis_mid_stream_fails_no_request(cluster, low_score_prompts):
    statuses, store_up = [], []
    for i, prompt in enumerate(low_score_prompts[:45]):
        if i == 15:
            cluster.redis.stop()
        if i == 30:
            cluster.redis.start()  # empty: the replicas re-seed ρ and refill the window
            time.sleep(0.6)  # one retry interval
        url = cluster.a if i % 2 == 0 else cluster.b
        statuses.append(cluster.generate(url, prompt).status_code)
        if i in (25, 44):
            store_up.append(total(metric_samples(cluster.b), "routet2i_budget_store_up", store="redis"))
    assert statuses == [200] * 45
    assert store_up == [0.0, 1.0]  # said so in /metrics while alone, and re-joined
    assert "serving on the local budget" in (cluster.logs / "b.log").read_text()
    snap = httpx.get(f"{cluster.b}/admin/budget", headers=AUTH, timeout=10).json()
    assert snap["store_up"] is True and snap["rho"] == RHO and 0 < snap["decisions"] <= WINDOW


def test_workers_without_redis_follow_an_admin_change_through_the_state_file(tmp_path):
    """`--workers N` without Redis: each worker has its own in-memory store on the one state file."""
    from gateway.budget import BudgetController, InMemoryBudgetStore

    path = tmp_path / "state.json"
    first, second = (BudgetController(InMemoryBudgetStore(0.3, state_path=path)) for _ in range(2))
    first.set_rho(0.45)
    assert second.rho == 0.45 and second.snapshot()["rho"] == 0.45
    path.write_text("{broken")  # a bad write elsewhere: keep serving on the values in force
    assert second.rho == 0.45
    second.set_cost_cap(9)
    assert first.snapshot()["cost_cap"] == 9 and first.rho == 0.45

"""Verify then escalate, end to end: real uvicorn on 127.0.0.1, real httpx, a tiny SD pipeline on the edge, a real
cloud worker (tiny SD3) on its own server, and a real tiny random CLIP saved to disk and loaded with from_pretrained.

The tiny CLIP scores every image near 0 (cosine similarity in [-1, 1]), so a threshold of 1 fails every image and
-1 passes every one. Routing uses the deterministic hash scorer, so which prompts the router sends to the edge is
known; the budget, the caps, the keys and the metrics are the real ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from backends.image_check import ClipImageCheck, score_images
from demo.processes import free_port
from demo.tiny import build_tiny_clip, build_tiny_sd3_pipeline, build_tiny_sd_pipeline
from gateway.app import create_app
from gateway.budget import BudgetController, BudgetSettings, InMemoryBudgetStore, RedisBudgetStore
from tests.servers import LiveServer, RedisServer
from tests.standins import HashScorer
from tests.test_gateway import ADMIN, count_requests, make_settings, sample, scrape
from tests.test_worker import TOKEN as WORKER_TOKEN
from tests.test_worker import wait_ready, worker_app

FAST = {"size": "64x64", "num_inference_steps": 2}


def edge_prompts(n: int, at_least: float = 0.5) -> list[str]:
    """Prompts the hash scorer gives PRŜ ≥ `at_least`: with ρ = 0.3 (α = 0.3 at cold start) the router sends them
    to the edge."""
    prompts = (f"a lighthouse on a cliff, take {i}" for i in range(1000))
    return [p for p in prompts if HashScorer().score([p]).prs[0] >= at_least][:n]


PROMPTS = edge_prompts(12)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("verify-models")
    return {
        "edge": build_tiny_sd_pipeline(root / "sd"), "cloud": build_tiny_sd3_pipeline(root / "sd3"),
        "clip": build_tiny_clip(root / "clip"),
    }  # fmt: skip


@pytest.fixture(scope="module")
def worker(models) -> Iterator[LiveServer]:
    app = worker_app(models["cloud"])
    requests = count_requests(app)
    with LiveServer(app) as server:
        wait_ready(server.url)
        server.requests = requests
        yield server


@pytest.fixture(scope="module")
def serve(models, worker, tmp_path_factory):
    """A context manager starting a gateway with the tiny CLIP check and these setting overrides."""

    @contextlib.contextmanager
    def start(**overrides) -> Iterator[tuple[LiveServer, httpx.Client]]:
        values = {
            "cloud_kind": "worker", "cloud_url": worker.url, "cloud_token": WORKER_TOKEN, "cache_enabled": False,
            "verify_clip_model": str(models["clip"]), "verify_device": "cpu", "verify_threshold": 1.0, **overrides,
        }  # fmt: skip
        settings = make_settings(models["edge"], tmp_path_factory.mktemp("gw") / "state.json", **values)
        app = create_app(settings, router=HashScorer())
        with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as http:
            server.app = app
            yield server, http

    return start


def generate(http: httpx.Client, prompt: str, **fields) -> dict:
    response = http.post("/generate", json={"prompt": prompt, **FAST, **fields})
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["x-route-backend"] == body["route"]["backend"]
    assert response.headers["x-route-reason"] == body["route"]["reason"]
    escalated = response.headers.get("x-route-escalated")
    assert escalated == ({True: "true", False: "false"}[body["route"]["escalated"]] if body["route"]["verified"]
                         else None)  # fmt: skip
    return body


def budget(http: httpx.Client) -> dict:
    response = http.get("/admin/budget", headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()


def verified(metrics: dict, result: str) -> float:
    return sample(metrics, "routet2i_verify_total", result=result)


# ---- the check -----------------------------------------------------------------------------------------------------
def test_clip_check_loads_a_saved_checkpoint_with_from_pretrained(models):
    """The check's score is CLIP's own cosine similarity: logits_per_image / logit_scale of CLIPModel.forward on the
    same saved directory; batched and one-by-one agree; a directory with no checkpoint fails to load."""
    from transformers import CLIPModel, CLIPProcessor

    check = ClipImageCheck(str(models["clip"]), device="cpu")
    images = [Image.new("RGB", (64, 64), color) for color in ((255, 0, 0), (0, 0, 255), (20, 200, 20))]
    batch = score_images(check, "a red bicycle", images)
    singles = [check.score("a red bicycle", image) for image in images]
    assert batch == pytest.approx(singles, abs=1e-5)
    assert all(-1 <= s <= 1 for s in batch) and len(set(round(s, 6) for s in batch)) == 3

    model, processor = CLIPModel.from_pretrained(models["clip"]).eval(), CLIPProcessor.from_pretrained(models["clip"])
    inputs = processor(text=["a red bicycle"], images=images, return_tensors="pt", padding=True)
    with torch.inference_mode():
        output = model(**inputs)
        expected = (output.logits_per_image[:, 0] / model.logit_scale.exp()).tolist()
    assert batch == pytest.approx(expected, abs=1e-4)
    assert check.score("a cat " * 400, images[0]) == pytest.approx(check.score("a cat " * 400, images[0]))  # truncated

    with pytest.raises(OSError):
        ClipImageCheck(str(models["clip"] / "_tokenizer"), device="cpu")  # a tokenizer, no model weights


@pytest.mark.parametrize("shared", [False, True], ids=["memory", "redis"])
def test_budget_escalate_is_a_counted_cloud_call_under_the_caps(tmp_path, shared):
    """`BudgetController.escalate` in either store: a cloud entry of its own (reason "escalated") while the caps allow;
    over the cost cap or the window cap, ("edge", "budget") and nothing counted."""
    if shared:
        server = RedisServer(tmp_path).start()
        store = RedisBudgetStore.from_url(server.url, prefix="verify", initial=BudgetSettings(0.5, 2))
    else:
        server, store = None, InMemoryBudgetStore(0.5, cost_cap=2)
    try:
        budget = BudgetController(store, decision_window=10)
        budget.force("edge")
        kept = budget.escalate()
        assert (kept.backend, kept.reason, kept.rho) == ("cloud", "escalated", 0.5) and kept.ticket is not None
        assert [budget.escalate().backend, budget.escalate().backend] == ["cloud", "edge"]  # the cost cap: 2 a minute
        state = budget.snapshot()
        assert (state["decisions"], state["cloud_calls"], state["cloud_calls_last_minute"]) == (3, 2, 2)
        budget.set_cost_cap(None)
        budget.set_rho(0.0)
        refused = budget.escalate()  # the window cap ⌊Σρᵢ⌋ = ⌊0.5 · 3⌋ = 1 < 2 + 1
        assert (refused.backend, refused.reason, refused.ticket) == ("edge", "budget", None)
        assert budget.snapshot()["decisions"] == 3
    finally:
        if server is not None:
            server.stop()


# ---- escalation ----------------------------------------------------------------------------------------------------
def test_an_image_under_the_threshold_is_escalated_and_both_calls_are_counted(serve, worker):
    with serve(verify_threshold=1.0) as (server, http):
        before, calls, metrics = budget(http), worker.requests["/v1/generate"], scrape(server.url)
        edge_calls = server.app.state.edge.pipeline_calls
        body = generate(http, PROMPTS[0], seed=7, verify=True)
        route = body["route"]
        assert (route["backend"], route["reason"], route["escalated"], route["verified"]) == (
            "cloud", "escalated", True, True
        )  # fmt: skip
        assert route["verify_result"] == "escalated" and route["verify_score"] < 1.0
        assert route["prs"] >= 0.5 and route["alpha"] <= 0.5  # the router's decision is still reported
        assert worker.requests["/v1/generate"] == calls + 1
        assert server.app.state.edge.pipeline_calls == edge_calls + 1  # the edge ran first

        after = budget(http)
        assert after["decisions"] == before["decisions"] + 2  # the edge call and the cloud call
        assert after["cloud_calls"] == before["cloud_calls"] + 1
        assert after["cloud_calls_last_minute"] == before["cloud_calls_last_minute"] + 1

        # the image served is the cloud's: the same seed forced to the cloud draws it again; the edge's differs
        cloud = generate(http, PROMPTS[0], seed=7, route="cloud")
        edge = generate(http, PROMPTS[0], seed=7, route="edge", verify=True)  # forced routes are not checked
        assert body["data"] == cloud["data"] != edge["data"]
        assert edge["route"]["verified"] is False and edge["route"]["verify_score"] is None

        metrics_after = scrape(server.url)
        assert verified(metrics_after, "escalated") == verified(metrics, "escalated") + 1
        scores = "routet2i_verify_score_count"
        assert sample(metrics_after, scores) == sample(metrics, scores) + 1
        key = {"name": "routet2i_requests_total", "backend": "cloud", "reason": "escalated", "status": "200"}
        assert sample(metrics_after, **key) == sample(metrics, **key) + 1


def test_an_image_over_the_threshold_is_kept_and_verify_follows_the_setting(serve, worker):
    with serve(verify_threshold=-1.0, verify_enabled=True) as (server, http):
        before, calls = budget(http), worker.requests["/v1/generate"]
        kept = generate(http, PROMPTS[1])  # "verify" unset: verify_enabled
        route = kept["route"]
        assert (route["backend"], route["reason"], route["verified"], route["escalated"]) == (
            "edge", "model", True, False
        )  # fmt: skip
        assert route["verify_result"] == "pass" and -1.0 <= route["verify_score"] <= 1.0
        off = generate(http, PROMPTS[2], verify=False)["route"]
        assert (off["backend"], off["verified"], off["verify_result"]) == ("edge", False, None)
        assert worker.requests["/v1/generate"] == calls
        assert budget(http)["decisions"] == before["decisions"] + 2  # one entry per request: nothing escalated
        assert verified(scrape(server.url), "pass") == 1


def test_a_cap_blocks_the_escalation_and_the_edge_image_is_kept(serve, worker):
    with serve(verify_threshold=1.0) as (server, http):
        assert http.put("/admin/budget", json={"cost_cap_per_minute": 1}, headers=ADMIN).status_code == 200
        assert generate(http, PROMPTS[3], route="cloud")["route"]["backend"] == "cloud"  # the minute's one call
        before, calls = budget(http), worker.requests["/v1/generate"]
        body = generate(http, PROMPTS[4], seed=11, verify=True)
        route = body["route"]
        assert (route["backend"], route["verified"], route["escalated"], route["verify_result"]) == (
            "edge", True, False, "capped"
        )  # fmt: skip
        assert route["reason"] in ("model", "budget") and route["verify_score"] < 1.0
        assert worker.requests["/v1/generate"] == calls
        after = budget(http)
        assert after["decisions"] == before["decisions"] + 1 and after["cloud_calls"] == before["cloud_calls"]
        assert body["data"] == generate(http, PROMPTS[4], seed=11, route="edge")["data"]  # the edge's image
        assert verified(scrape(server.url), "capped") == 1

        # ρ = 0: the window cap refuses every cloud call, escalations included
        assert http.put("/admin/budget", json={"rho": 0.0, "cost_cap_per_minute": 0}, headers=ADMIN).status_code == 200
        assert generate(http, PROMPTS[5], verify=True)["route"]["verify_result"] == "capped"
        assert worker.requests["/v1/generate"] == calls


def test_private_prompts_never_escalate(serve, worker):
    with serve(verify_threshold=1.0, verify_enabled=True) as (server, http):
        calls = worker.requests["/v1/generate"]
        for fields in ({"private": True}, {"private": True, "verify": True}):
            route = generate(http, PROMPTS[6], **fields)["route"]
            assert (route["backend"], route["reason"], route["escalated"], route["verified"]) == (
                "edge", "private", False, False
            ), fields  # fmt: skip
        assert worker.requests["/v1/generate"] == calls
        assert generate(http, PROMPTS[6])["route"]["escalated"] is True  # the same prompt, not private: escalated
        assert worker.requests["/v1/generate"] == calls + 1


def test_a_failed_escalation_serves_the_edge_image_and_gives_the_call_back(serve):
    with serve(verify_threshold=1.0, cloud_url=f"http://127.0.0.1:{free_port()}") as (server, http):
        before = budget(http)
        route = generate(http, PROMPTS[7], verify=True)["route"]
        assert (route["backend"], route["escalated"], route["verify_result"]) == ("edge", False, "failed")
        after = budget(http)
        assert after["cloud_calls"] == before["cloud_calls"] and after["cloud_calls_last_minute"] == 0
        metrics = scrape(server.url)
        assert verified(metrics, "failed") == 1
        assert sum(v for (name, labels), v in metrics.items() if name == "routet2i_backend_errors_total"
                   and ("backend", "cloud") in labels) >= 1  # fmt: skip


# ---- validation ----------------------------------------------------------------------------------------------------
def test_a_verify_that_is_not_a_boolean_is_422(serve):
    with serve() as (_, http):
        for value in ("true", 1, 0, 0.5, [], {}):
            response = http.post("/generate", json={"prompt": "a cat", **FAST, "verify": value})
            assert response.status_code == 422, (value, response.text)
            assert [error["loc"][:2] for error in response.json()["detail"]] == [["body", "verify"]], value
        assert generate(http, PROMPTS[9], verify=None)["route"]["verified"] is False  # null: the default (off)


def test_verify_without_an_image_check_is_422_and_enabling_it_without_one_fails_at_start(serve, models, tmp_path):
    with serve(verify_clip_model=None) as (_, http):
        response = http.post("/generate", json={"prompt": "a cat", **FAST, "verify": True})
        assert response.status_code == 422 and "verify_clip_model" in response.json()["detail"]
        assert generate(http, PROMPTS[8], verify=False)["route"]["verified"] is False
    settings = make_settings(models["edge"], tmp_path / "state.json", verify_enabled=True)
    with pytest.raises(ValueError, match="VERIFY_CLIP_MODEL"):
        create_app(settings, router=HashScorer())


def test_the_demo_gets_the_tiny_clip_check(models, tmp_path):
    from gateway.demo import demo_settings

    base = make_settings(models["edge"], tmp_path / "state.json")
    demo = demo_settings(base, "http://127.0.0.1:1", "token", models["edge"], clip=models["clip"])
    assert (demo.verify_clip_model, demo.verify_threshold, demo.verify_enabled) == (str(models["clip"]), 0.0, False)
    chosen = make_settings(models["edge"], tmp_path / "state.json", verify_threshold=0.05)
    kept = demo_settings(chosen, "http://127.0.0.1:1", "token", models["edge"], clip=models["clip"])
    assert kept.verify_threshold == 0.05
    assert demo_settings(base, "http://127.0.0.1:1", "token", models["edge"]).verify_clip_model is None

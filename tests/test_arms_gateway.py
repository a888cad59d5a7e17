"""The gateway with three arms (two local tiny pipelines at different steps, one remote worker): real uvicorn on
127.0.0.1, real httpx, the shipped router. Routing by argmax q − λ·cost, a cost budget changed live through the
admin API, private prompts never on a remote arm, a down arm falling back, settings refused with clear errors,
and the two-arm shorthand answering in the N-arm vocabulary."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from demo.processes import free_port
from demo.tiny import build_tiny_sd3_pipeline, build_tiny_sd_pipeline
from gateway.app import create_app
from gateway.budget import pacing
from gateway.settings import Settings
from router_model.model import RouteT2IRouter
from router_model.model_ids import DEFAULT_CLOUD_ID
from tests.servers import LiveServer
from tests.test_gateway import ADMIN, ADMIN_TOKEN, make_settings, sample, scrape
from tests.test_worker import TOKEN as WORKER_TOKEN
from tests.test_worker import wait_ready, worker_app

TOKEN_ENV = "ROUTET2I_TEST_ARM_WORKER_TOKEN"
FAST = {"size": "64x64"}
PROMPTS = [
    "a red bicycle", "a watercolor of a fox reading a newspaper in a crowded train at night", "two cats",
    "an isometric city with seven towers, a river and a bridge made of glass", "a lighthouse", "a bowl of soup",
    "three astronauts playing chess on the moon while a dog watches", "a tree", "text that says HELLO on a wall",
    "a photo of a glass of water to the left of a blue book",
]  # fmt: skip


def arms(edge: Path, worker_url: str, **cloud) -> list[dict]:
    return [
        {"name": "edge-fast", "kind": "local", "model_id": "sd-2.1", "cost": 0.1, "steps": 1, "model": str(edge),
         "device": "cpu", "quality_offset": -0.05},
        {"name": "edge", "kind": "local", "model_id": "SD2.1", "cost": 0.25, "steps": 2, "model": str(edge),
         "device": "cpu"},
        {"name": "cloud", "kind": "worker", "model_id": "sd3.5-large", "cost": 1.0, "url": worker_url,
         "token_env": TOKEN_ENV, **cloud},
    ]  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-arm-models")
    return {"edge": build_tiny_sd_pipeline(root / "sd"), "cloud": build_tiny_sd3_pipeline(root / "sd3")}


@pytest.fixture(scope="module")
def router():
    return RouteT2IRouter.from_pretrained(str(Path(__file__).parents[1] / "router_model/checkpoints/default"))


@pytest.fixture(scope="module")
def worker(models) -> Iterator[LiveServer]:
    os.environ[TOKEN_ENV] = WORKER_TOKEN
    app = worker_app(models["cloud"])
    calls = {"n": 0}

    @app.middleware("http")
    async def count(request, call_next):
        if request.url.path != "/readyz":
            calls["n"] += 1
        return await call_next(request)

    with LiveServer(app) as server:
        wait_ready(server.url)
        server.calls = calls
        yield server
    os.environ.pop(TOKEN_ENV, None)


@pytest.fixture(scope="module")
def gateway(models, router, worker, tmp_path_factory) -> Iterator[LiveServer]:
    state = tmp_path_factory.mktemp("arms") / "state.json"
    settings = make_settings(
        models["edge"], state, arms=arms(models["edge"], worker.url), cost_budget=0.4, decision_window=20,
        cache_enabled=False,
    )  # fmt: skip
    with LiveServer(create_app(settings, router=router)) as server:
        yield server


@pytest.fixture(scope="module")
def http(gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        yield client


def served(http: httpx.Client, prompt: str, **fields) -> dict:
    response = http.post("/generate", json={"prompt": prompt, **FAST, **fields})
    assert response.status_code == 200, response.text
    body = response.json()
    route = body["route"]
    assert response.headers["x-route-arm"] == route["arm"] and response.headers["x-route-reason"] == route["reason"]
    assert response.headers["x-route-backend"] == ("edge" if route["arm"] != "cloud" else "cloud")
    return route


def expected_arm(route: dict, costs=(0.1, 0.25, 1.0)) -> str:
    """argmax q − λ·c, q from PRŜ as documented: PRŜ − 0.05, PRŜ, 1 (the cloud model)."""
    q = [route["prs"] - 0.05, route["prs"], 1.0]
    return ["edge-fast", "edge", "cloud"][pacing.ranking(q, costs, route["lam"])[0]]


def put_budget(http: httpx.Client, **body) -> httpx.Response:
    return http.put("/admin/budget", json=body, headers=ADMIN)


def test_three_arms_route_by_the_rule_and_obey_a_budget_change(http, worker):
    put_budget(http, cost_budget=0.4)
    routes = [served(http, PROMPTS[i % len(PROMPTS)], seed=i) for i in range(24)]
    for route in routes:
        assert route["reason"] in ("model", "budget") and route["lam"] is not None
        if route["reason"] == "model":
            assert route["arm"] == expected_arm(route)
        assert route["cost"] == {"edge-fast": 0.1, "edge": 0.25, "cloud": 1.0}[route["arm"]]
    budget = http.get("/admin/budget", headers=ADMIN).json()
    assert budget["mode"] == "arms" and budget["cost_budget"] == 0.4
    assert budget["mean_cost"] <= 0.4 + 1e-9  # the window (20 requests) never spends more than the budget
    assert [a["name"] for a in budget["arms"]] == ["edge-fast", "edge", "cloud"]

    # the cheapest arm's cost as the budget: once the window has turned over, only edge-fast serves
    changed = put_budget(http, cost_budget=0.1)
    assert changed.status_code == 200 and changed.json()["cost_budget"] == 0.1
    later = [served(http, PROMPTS[i % len(PROMPTS)], seed=100 + i)["arm"] for i in range(30)]
    assert set(later[20:]) == {"edge-fast"}

    # a budget above the dearest arm: λ falls to 0 and every prompt goes to its best arm, the cloud
    before = worker.calls["n"]
    assert put_budget(http, cost_budget=2.0).status_code == 200
    top = [served(http, PROMPTS[i % len(PROMPTS)], seed=200 + i) for i in range(25)]
    assert {r["arm"] for r in top[-5:]} == {"cloud"} and worker.calls["n"] > before
    assert http.get("/admin/budget", headers=ADMIN).json()["lambda"] == 0.0

    # ρ is the shorthand: the cost between the cheapest (ρ 0) and the dearest arm (ρ 1)
    assert put_budget(http, rho=0.5).json()["cost_budget"] == pytest.approx(0.55)
    assert put_budget(http, cost_budget=0.05).status_code == 422  # below the cheapest arm
    assert put_budget(http, rho=0.5, cost_budget=0.5).status_code == 422

    # the cost cap counts the calls of every remote arm: 0 removes it
    assert put_budget(http, cost_budget=2.0, cost_cap_per_minute=1).json()["cost_cap"] == 1
    capped = [served(http, PROMPTS[i], seed=300 + i) for i in range(3)]
    assert sum(r["arm"] == "cloud" for r in capped) <= 1 and "budget" in {r["reason"] for r in capped}
    assert put_budget(http, cost_cap_per_minute=0).json()["cost_cap"] is None


def test_private_prompts_never_use_a_remote_arm(http, worker):
    assert put_budget(http, cost_budget=2.0).status_code == 200  # the cloud would win every prompt
    before = worker.calls["n"]
    routes = [served(http, PROMPTS[i], private=True) for i in range(6)]
    assert all(r["arm"] in ("edge-fast", "edge") and r["reason"] == "private" for r in routes)
    assert worker.calls["n"] == before
    assert served(http, PROMPTS[0], route="edge")["arm"] in ("edge-fast", "edge")
    forced = served(http, PROMPTS[0], route="cloud")
    assert (forced["arm"], forced["reason"]) == ("cloud", "forced")
    preview = http.post("/route", json={"prompt": PROMPTS[1], "private": True}).json()
    assert preview["arm"] in ("edge-fast", "edge") and set(preview["arm_quality"]) == {"edge-fast", "edge", "cloud"}


def test_arm_metrics_name_the_arm_the_reason_and_the_cost(gateway, http):
    served(http, PROMPTS[2], private=True)
    metrics = scrape(gateway.url)
    total = sum(v for (name, _), v in metrics.items() if name == "routet2i_arm_requests_total")
    spent = sum(v for (name, _), v in metrics.items() if name == "routet2i_arm_cost_total")
    assert total >= 1 and spent > 0
    assert sample(metrics, "routet2i_arm_requests_total", arm="cloud", reason="forced") >= 1
    assert ("routet2i_lambda", ()) in metrics
    status = httpx.get(f"{gateway.url}/v1/status").json()["budget"]
    assert {a["name"]: a["cost"] for a in status["arms"]} == {"edge-fast": 0.1, "edge": 0.25, "cloud": 1.0}
    assert sum(a["requests"] for a in status["arms"]) == status["decisions"]


def test_a_down_arm_falls_back_to_the_next_best_arm_that_is_up(models, router, tmp_path):
    os.environ[TOKEN_ENV] = WORKER_TOKEN
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = make_settings(
        models["edge"], tmp_path / "state.json", arms=arms(models["edge"], dead), cost_budget=2.0,
        cloud_retries=0, cache_enabled=False,
    )  # fmt: skip
    with LiveServer(create_app(settings, router=router)) as server, httpx.Client(base_url=server.url) as http:
        route = served(http, PROMPTS[1], route="cloud")
        assert route["arm"] in ("edge-fast", "edge") and route["reason"] == "fallback"
        assert route["cost"] == {"edge-fast": 0.1, "edge": 0.25}[route["arm"]]
        snap = http.get("/admin/budget", headers=ADMIN).json()
        assert snap["window_cost"] == pytest.approx(route["cost"])  # the fallback's cost, not the cloud's
        errors = scrape(server.url)
        assert sample(errors, "routet2i_arm_requests_total", arm=route["arm"], reason="fallback") == 1


def test_two_arm_shorthand_speaks_arms_and_cost_budget(models, router, tmp_path):
    settings = make_settings(
        models["edge"], tmp_path / "state.json", edge_cost=0.2, cloud_cost=1.0, cloud_kind="worker",
        cloud_url=f"http://127.0.0.1:{free_port()}",
    )  # fmt: skip
    with LiveServer(create_app(settings, router=router)) as server, httpx.Client(base_url=server.url) as http:
        route = served(http, PROMPTS[0], route="edge")
        assert (route["arm"], route["cost"], route["lam"]) == ("edge", 0.2, None)
        snap = http.get("/admin/budget", headers=ADMIN).json()
        assert snap["mode"] == "two-arm" and snap["cost_budget"] == pytest.approx(0.2 + 0.3 * 0.8)
        assert [a["name"] for a in snap["arms"]] == ["edge", "cloud"] and "alpha" in snap
        after = put_budget(http, cost_budget=0.6).json()
        assert after["rho"] == pytest.approx(0.5) and after["cost_budget"] == pytest.approx(0.6)
        assert put_budget(http, rho=0.25).json()["rho"] == 0.25


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a[:1], "at least two arms"),
        (lambda a: [a[0], {**a[1], "name": "edge-fast"}, a[2]], "unique"),
        (lambda a: [{**a[2], "name": "w1"}, {**a[2], "name": "w2"}], "must not be remote"),
        (lambda a: [a[0], {"name": "s", "kind": "stability", "model_id": "x", "cost": 1}], "token_env"),
        (lambda a: [a[0], {**a[1], "kind": "local", "remote": True}], "remote must be false"),
        (lambda a: [a[0], {**a[1], "cost": -1}], "cost"),
    ],
)
def test_arm_settings_are_refused_with_clear_errors(models, change, message):
    with pytest.raises(ValidationError, match=message):
        Settings(arms=change(arms(models["edge"], "http://127.0.0.1:1")), admin_token=ADMIN_TOKEN)


def test_paper_mapping_of_quality_is_documented_behaviour():
    from gateway.arm_routing import arm_qualities
    from gateway.arms import ArmSpec
    from gateway.routing import PromptScore

    specs = [ArmSpec(**a) for a in arms(Path("/x"), "http://127.0.0.1:1")]
    score = PromptScore(prs=0.7, per_metric={}, latency_s=0.0, batch_size=1)
    assert arm_qualities(score, specs, DEFAULT_CLOUD_ID) == pytest.approx([0.65, 0.7, 1.0])
    known = PromptScore(0.7, {}, 0.0, 1, quality={"sd-2.1": 0.2, "sd-3.5-large": 0.5})
    assert arm_qualities(known, specs, DEFAULT_CLOUD_ID) == pytest.approx([0.15, 0.2, 0.5])


def test_a_many_model_router_scores_each_arms_model():
    import numpy as np
    import torch

    from router_model.features import FEATURE_NAMES, prompt_features
    from router_model.multi_router import MultiRouter, MultiRouterConfig

    config = MultiRouterConfig(models=["sd-2.1", "sd-3.5-large", "sdxl-turbo"], use_embedding=False, rank=2)
    model = MultiRouter(config)
    with torch.no_grad():
        model.ability.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
    prompts = ["a red bicycle", "three cats on a sofa to the left of a lamp"]
    feats = prompt_features(prompts, names=list(FEATURE_NAMES))
    out = model.advantage_from_inputs(
        feats, None, np.array([3, 9]), "SD2.1", "sd-3.5-large", models=["SD2.1", "sdxl-turbo"]
    )
    theta = model.theta(model.inputs(feats, None)).detach().numpy()
    centred = model.ability.detach().numpy() - model.ability.detach().numpy().mean(0)
    assert out.quality is not None and set(out.quality) == {"sd-2.1", "sdxl-turbo"}
    assert np.allclose(out.quality["sd-2.1"], theta @ centred[0]) and np.allclose(
        out.quality["sdxl-turbo"], theta @ centred[2]
    )
    # the quality gap of a pair is its advantage (no length blend)
    both = model.advantage_from_inputs(
        feats, None, np.array([3, 9]), "sd-2.1", "sd-3.5-large", models=["sd-2.1", "sd-3.5-large"]
    )
    assert np.allclose(both.quality["sd-3.5-large"] - both.quality["sd-2.1"], both.advantage)
    assert model.advantage_from_inputs(feats, None, np.array([3, 9]), "sd-2.1", "x", models=["x"]).quality is None


def test_a_seeded_repeat_on_an_arm_is_a_zero_cost_cache_hit(models, router, tmp_path):
    os.environ[TOKEN_ENV] = WORKER_TOKEN
    dead = f"http://127.0.0.1:{free_port()}"
    settings = make_settings(models["edge"], tmp_path / "state.json", arms=arms(models["edge"], dead), cost_budget=0.4)
    with LiveServer(create_app(settings, router=router)) as server, httpx.Client(base_url=server.url) as http:
        first = served(http, PROMPTS[4], route="edge", seed=11)
        again = served(http, PROMPTS[4], route="edge", seed=11)
        assert first["reason"] == "forced" and (again["reason"], again["cost"], again["arm"]) == (
            "cache",
            0.0,
            first["arm"],
        )
        snap = http.get("/admin/budget", headers=ADMIN).json()
        assert snap["decisions"] == 2 and snap["window_cost"] == pytest.approx(first["cost"])
        assert sample(scrape(server.url), "routet2i_arm_cost_total", arm=first["arm"]) == pytest.approx(first["cost"])

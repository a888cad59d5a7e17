"""The gateway end to end: real uvicorn on 127.0.0.1, real httpx clients, a real cloud worker (tiny SD3)
on its own server, a tiny SD pipeline on the edge and the shipped router checkpoint.

Faults (a killed worker, Stability's API, overload) are in test_gateway_faults.py.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from demo.processes import free_port, spawn, stop, wait_until_ready
from demo.tiny import build_tiny_sd3_pipeline, build_tiny_sd_pipeline
from gateway.app import create_app
from gateway.settings import DEFAULT_ROUTER, Settings
from router_model.model import RouteT2IRouter
from tests.servers import LiveServer
from tests.test_worker import TOKEN as WORKER_TOKEN
from tests.test_worker import wait_ready, worker_app

ADMIN_TOKEN = "admin-secret"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FAST = {"size": "64x64", "num_inference_steps": 2}
JSON = {"content-type": "application/json"}


# ---- helpers shared with test_gateway_faults.py ------------------------------------------------------------------
def make_settings(edge_model: Path, state_file: Path, **overrides) -> Settings:
    """Settings built explicitly (not from the environment's defaults): tiny edge, CPU, 2 steps."""
    values = {
        "edge_model": str(edge_model), "edge_device": "cpu", "edge_default_steps": 2, "router_device": "cpu",
        "state_file": str(state_file), "admin_token": ADMIN_TOKEN, "rho": 0.3, "cloud_kind": "none",
        "cloud_retries": 0, "cloud_timeout_s": 30,
    }  # fmt: skip
    return Settings(**{**values, **overrides})


def count_requests(app: FastAPI) -> Counter:
    """Count the requests an app receives, by path (its own access log, in memory)."""
    app.state.requests = Counter()

    @app.middleware("http")
    async def count(request: Request, call_next):
        app.state.requests[request.url.path] += 1
        return await call_next(request)

    return app.state.requests


def decode_png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
    assert image.format == "PNG"
    image.load()
    return image


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """/metrics parsed by Prometheus' own parser: {(sample name, sorted labels): value}."""
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def sample(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def served(metrics: dict, backend: str, reason: str, status: int = 200) -> float:
    return sample(metrics, "routet2i_requests_total", backend=backend, reason=reason, status=str(status))


def eventually(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        time.sleep(0.01)


# ---- fixtures ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {"edge": build_tiny_sd_pipeline(root / "sd"), "cloud": build_tiny_sd3_pipeline(root / "sd3")}


@pytest.fixture(scope="module")
def router():
    return RouteT2IRouter.from_pretrained(str(DEFAULT_ROUTER), device="cpu")


@pytest.fixture(scope="module")
def worker(models) -> Iterator[LiveServer]:
    app = worker_app(models["cloud"])
    requests = count_requests(app)
    with LiveServer(app) as server:
        wait_ready(server.url)
        server.requests = requests
        yield server


@pytest.fixture(scope="module")
def gateway(models, router, worker, tmp_path_factory) -> Iterator[LiveServer]:
    state = tmp_path_factory.mktemp("gateway") / "state.json"
    settings = make_settings(models["edge"], state, cloud_kind="worker", cloud_url=worker.url, cloud_token=WORKER_TOKEN)
    with LiveServer(create_app(settings, router=router)) as server:
        server.settings = settings
        yield server


@pytest.fixture(scope="module")
def http(gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        yield client


def generate(http: httpx.Client, prompt: str = "a lighthouse on a cliff", **fields) -> httpx.Response:
    return http.post("/generate", json={"prompt": prompt, **FAST, **fields})


def ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["x-route-backend"] == body["route"]["backend"]
    assert response.headers["x-route-reason"] == body["route"]["reason"]
    return body


def admin_budget(http: httpx.Client) -> dict:
    response = http.get("/admin/budget", headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()


# ---- images --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("route", "size"), [("edge", (96, 64)), ("cloud", (64, 64))])
def test_generate_returns_png_of_requested_size(http, route, size):
    body = ok(generate(http, route=route, size=f"{size[0]}x{size[1]}"))
    assert set(body) == {"created", "data", "seed", "route"}
    assert abs(body["created"] - time.time()) < 120 and isinstance(body["seed"], int)
    assert body["route"]["backend"] == route and body["route"]["reason"] == "forced"
    [image] = body["data"]
    assert decode_png(image["b64_json"]).size == size


def test_n_2_returns_two_distinct_images(http):
    body = ok(generate(http, route="edge", n=2, seed=3))
    images = [decode_png(item["b64_json"]) for item in body["data"]]
    assert [im.size for im in images] == [(64, 64), (64, 64)]
    assert images[0].tobytes() != images[1].tobytes()  # image i is drawn from seed + i


def test_openai_images_generations_shape(http):
    response = http.post(
        "/v1/images/generations",
        json={"prompt": "two cats on a sofa", "n": 2, "size": "64x64", "model": "auto"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"created", "data"} and isinstance(body["created"], int)
    assert len(body["data"]) == 2 and all(set(item) == {"b64_json"} for item in body["data"])
    assert all(decode_png(item["b64_json"]).size == (64, 64) for item in body["data"])
    assert response.headers["x-route-backend"] in ("edge", "cloud")
    bad = http.post("/v1/images/generations", json={"prompt": "x", "response_format": "url"})
    assert bad.status_code == 422 and "response_format" in bad.text


@pytest.mark.parametrize("route", ["edge", "cloud"])
def test_seed_reproduces_and_the_seed_used_is_returned(http, route):
    first = ok(generate(http, route=route, seed=1234))
    again = ok(generate(http, route=route, seed=1234))
    other = ok(generate(http, route=route, seed=1235))
    assert first["seed"] == again["seed"] == 1234 and other["seed"] == 1235
    assert first["data"][0]["b64_json"] == again["data"][0]["b64_json"]
    assert first["data"][0]["b64_json"] != other["data"][0]["b64_json"]
    drawn = ok(generate(http, route=route))  # no seed: one is drawn, returned, and replays the image
    replay = ok(generate(http, route=route, seed=drawn["seed"]))
    assert drawn["data"][0]["b64_json"] == replay["data"][0]["b64_json"]


# ---- routing -------------------------------------------------------------------------------------------------------
def test_forced_and_private_routes(http, worker):
    calls = worker.requests
    before = calls["/v1/generate"]
    assert ok(generate(http, route="edge"))["route"]["reason"] == "forced"
    assert calls["/v1/generate"] == before
    cloud = ok(generate(http, route="cloud"))["route"]
    assert (cloud["backend"], cloud["reason"], cloud["prs"]) == ("cloud", "forced", None)
    assert calls["/v1/generate"] == before + 1
    for fields in ({"private": True}, {"private": True, "route": "cloud"}, {"private": True, "route": "auto"}):
        route = ok(generate(http, "a cat", **fields))["route"]
        assert (route["backend"], route["reason"]) == ("edge", "private"), fields
    assert calls["/v1/generate"] == before + 1  # a private prompt never reached the worker


def test_route_preview_applies_the_cost_cap(http, worker):
    """/route goes through the controller: with the minute's cloud calls used up, a prompt the router sends to the
    cloud is previewed as ("edge", "budget"), like /generate would serve it."""
    before = admin_budget(http)
    prompts = ["cat", "a red bicycle", "a bowl of fruit on a wooden table", "a lighthouse on a cliff", "a dog"]
    try:
        assert http.put("/admin/budget", json={"rho": 1.0, "cost_cap_per_minute": 1}, headers=ADMIN).status_code == 200
        open_cap = {p: http.post("/route", json={"prompt": p}).json() for p in prompts}
        cloud_bound = [p for p, r in open_cap.items() if r["prs"] < r["alpha"]]
        assert cloud_bound, f"no test prompt scores under α at ρ = 1: {open_cap}"
        if admin_budget(http)["cloud_calls_last_minute"] < 1:
            assert ok(generate(http, "a cat", route="cloud"))["route"]["backend"] == "cloud"  # uses the minute's call
        for prompt in cloud_bound:
            capped = http.post("/route", json={"prompt": prompt}).json()
            assert (capped["backend"], capped["reason"]) == ("edge", "budget"), capped
    finally:
        cap = before["cost_cap"] or 0
        http.put("/admin/budget", json={"rho": before["rho"], "cost_cap_per_minute": cap}, headers=ADMIN)


def test_auto_route_is_decided_by_the_router(http, worker):
    """The PRS the router gives a prompt (as /route reports it) and α decide where it goes."""
    scores = {p: http.post("/route", json={"prompt": p}).json() for p in ("cat", "a red bicycle")}
    for prompt, score in scores.items():
        body = ok(generate(http, prompt))
        route = body["route"]
        assert route["reason"] in ("model", "budget")
        assert route["prs"] == pytest.approx(score["prs"], abs=1e-5)
        expected = "cloud" if score["prs"] < route["alpha"] and route["reason"] == "model" else "edge"
        assert route["backend"] == expected


def test_route_scores_without_generating_or_counting(http, gateway, worker):
    metrics_before, budget_before = scrape(gateway.url), admin_budget(http)
    worker_before = worker.requests["/v1/generate"]
    response = http.post("/route", json={"prompt": "a bowl of fruit on a wooden table"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert 0 < body["prs"] < 1
    assert set(body["per_metric"]) == {"alignment"} and all(0 < v < 1 for v in body["per_metric"].values())
    assert body["head"] == "paper"  # the paper's pair router scored it (a many-model router says pair / generic)
    assert body["reason"] in ("model", "budget")  # the caps apply to the preview too
    wants_cloud = body["prs"] < body["alpha"] and body["reason"] == "model"
    assert body["backend"] == ("cloud" if wants_cloud else "edge")
    assert 0 <= body["alpha"] <= 0.5 and body["rho"] == budget_before["rho"]
    private = http.post("/route", json={"prompt": "a bowl of fruit", "private": True}).json()
    assert (private["backend"], private["reason"]) == ("edge", "private")

    metrics_after, budget_after = scrape(gateway.url), admin_budget(http)
    assert budget_after["decisions"] == budget_before["decisions"]
    assert budget_after["scores"] == budget_before["scores"]
    assert worker.requests["/v1/generate"] == worker_before
    requests = [k for k in metrics_after if k[0] == "routet2i_requests_total"]
    assert all(metrics_after[k] == metrics_before.get(k, 0.0) for k in requests)
    latency = "routet2i_router_latency_seconds_count"
    assert sample(metrics_after, latency) == sample(metrics_before, latency) + 2  # scored, not generated


# ---- admin ---------------------------------------------------------------------------------------------------------
def test_admin_auth(http):
    missing = http.get("/admin/budget")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert http.get("/admin/budget", headers={"Authorization": "Bearer nope"}).status_code == 403
    assert http.put("/admin/budget", json={"rho": 0.5}, headers={"Authorization": "Bearer nope"}).status_code == 403
    body = admin_budget(http)
    assert 0 <= body["rho"] <= 1 and 0 <= body["alpha"] <= 0.5


@pytest.mark.parametrize("rho", [1.5, -0.1, "lots"])
def test_rho_out_of_range_is_422_naming_rho(http, rho):
    before = admin_budget(http)["rho"]
    response = http.put("/admin/budget", json={"rho": rho}, headers=ADMIN)
    assert response.status_code == 422
    assert any(error["loc"][-1] == "rho" for error in response.json()["detail"])
    assert admin_budget(http)["rho"] == before


def test_rho_change_is_live_persisted_and_survives_a_restart(http, gateway, models, router):
    state_file = Path(gateway.settings.state_file)
    try:
        response = http.put("/admin/budget", json={"rho": 0.7}, headers=ADMIN)
        assert response.status_code == 200 and response.json()["rho"] == 0.7
        assert admin_budget(http)["rho"] == 0.7
        assert sample(scrape(gateway.url), "routet2i_budget_rho") == 0.7
        assert json.loads(state_file.read_text())["rho"] == 0.7
        assert generate(http).json()["route"]["rho"] == 0.7  # in force on the next request

        # A new gateway on the same state file: no admin token (the endpoint is off) and no cloud.
        settings = make_settings(models["edge"], state_file, rho=0.1, admin_token=None, cloud_kind="none")
        with (
            LiveServer(create_app(settings, router=router)) as restarted,
            httpx.Client(base_url=restarted.url, timeout=60) as other,
        ):
            assert other.get("/v1/status").json()["budget"]["rho"] == 0.7
            assert sample(scrape(restarted.url), "routet2i_budget_rho") == 0.7
            off = other.get("/admin/budget", headers=ADMIN)
            assert off.status_code == 404 and "ROUTET2I_ADMIN_TOKEN" in off.json()["detail"]
            assert other.put("/admin/budget", json={"rho": 0.2}, headers=ADMIN).status_code == 404
            # cloud_kind none: a request for the cloud is served by the edge as a fallback, never a 5xx
            route = ok(generate(other, route="cloud"))["route"]
            assert (route["backend"], route["reason"], route["rho"]) == ("edge", "fallback", 0.7)
            metrics = scrape(restarted.url)
            assert served(metrics, "edge", "fallback") == 1
            assert sample(metrics, "routet2i_backend_errors_total", backend="cloud", kind="not_configured") == 1
            readyz = other.get("/readyz").json()
            assert readyz == {"ready": True, "router": True, "edge": True, "cloud": None, "cloud_breaker": None}
    finally:
        assert http.put("/admin/budget", json={"rho": 0.3}, headers=ADMIN).status_code == 200


# ---- metrics -------------------------------------------------------------------------------------------------------
def test_metrics_agree_with_the_requests_made(http, gateway):
    before = scrape(gateway.url)
    ok(generate(http, route="edge"))
    ok(generate(http, route="edge"))
    ok(generate(http, route="cloud"))
    ok(generate(http, "a quiet street", private=True))
    auto = ok(generate(http, "a dog in the snow"))["route"]
    assert generate(http, size="65x64").status_code == 422
    after = scrape(gateway.url)

    expected = Counter({("edge", "forced", 200): 2, ("cloud", "forced", 200): 1, ("edge", "private", 200): 1})
    expected[(auto["backend"], auto["reason"], 200)] += 1
    expected[("none", "none", 422)] += 1  # refused before routing: counted without a backend
    for (backend, reason, status), count in expected.items():
        delta = served(after, backend, reason, status) - served(before, backend, reason, status)
        assert delta == count, (backend, reason, status)
    total = "routet2i_requests_total"
    assert sum(v for k, v in after.items() if k[0] == total) - sum(v for k, v in before.items() if k[0] == total) == 6
    latency = "routet2i_router_latency_seconds_count"
    assert sample(after, latency) == sample(before, latency) + 1  # only the auto request was scored
    duration = "routet2i_request_duration_seconds_count"
    assert sample(after, duration, backend="cloud") - sample(before, duration, backend="cloud") == (
        1 + (auto["backend"] == "cloud")
    )
    assert sample(after, "routet2i_budget_rho") == admin_budget(http)["rho"]
    assert sample(after, "routet2i_edge_queue_depth") == 0
    try:
        http.put("/admin/budget", json={"rho": 0.55}, headers=ADMIN)
        assert sample(scrape(gateway.url), "routet2i_budget_rho") == 0.55
    finally:
        http.put("/admin/budget", json={"rho": 0.3}, headers=ADMIN)


# ---- bad input -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   \n"}, "prompt"),
        ({"prompt": "x" * 2001}, "prompt"),
        ({"size": "65x64"}, "size"),
        ({"size": "big"}, "size"),
        ({"n": 5}, "n"),
        ({"n": 0}, "n"),
        ({"route": "moon"}, "route"),
        ({"seed": -1}, "seed"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_input_is_422_naming_the_field(http, fields, field):
    response = http.post("/generate", json={"prompt": "a cat", "size": "64x64", **fields})
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert [e["loc"] for e in errors] == [["body", field]], errors
    assert errors[0]["msg"]


def test_missing_prompt_and_not_json_are_422(http):
    missing = http.post("/generate", json={"size": "64x64"})
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "prompt"]
    blank = http.post("/v1/images/generations", json={"prompt": " "})
    assert blank.status_code == 422 and blank.json()["detail"][0]["loc"] == ["body", "prompt"]
    garbage = http.post("/generate", content=b"{not json", headers=JSON)
    assert garbage.status_code == 422


def test_body_over_max_body_bytes_is_413(http, gateway):
    limit, before = gateway.settings.max_body_bytes, scrape(gateway.url)
    response = http.post("/generate", json={"prompt": "a cat", "negative_prompt": "x" * (limit + 1)})
    assert response.status_code == 413 and str(limit) in response.json()["detail"]
    padded = http.post("/route", content=b" " * (limit + 1), headers=JSON)
    assert padded.status_code == 413
    chunked = http.post("/generate", content=iter([b'{"prompt": "a cat", "size": "64x64"}']), headers=JSON)
    assert chunked.status_code == 411 and "Content-Length" in chunked.json()["detail"]  # no way around the cap
    assert served(scrape(gateway.url), "none", "none", 413) == served(before, "none", "none", 413) + 1


def test_health_readiness_and_status(http):
    assert http.get("/healthz").json() == {"status": "ok"}
    readyz = http.get("/readyz").json()
    assert readyz.pop("cloud_breaker") == {"state": "closed", "retry_in_s": 0.0, "consecutive_failures": 0}
    assert readyz == {"ready": True, "router": True, "edge": True, "cloud": True}
    status = http.get("/v1/status").json()
    assert status["ready"] and status["cloud_configured"] and status["admin_enabled"]
    assert ADMIN_TOKEN not in json.dumps(status) and WORKER_TOKEN not in json.dumps(status)


# ---- demo mode as a real process -----------------------------------------------------------------------------------
TOKEN_LINE = re.compile(r"demo: admin token: (\S+)")
WORKER_LINE = re.compile(r"demo: cloud worker \(tiny SD3\) on (http://127\.0\.0\.1:\d+)")


@pytest.mark.slow
def test_serve_demo_process(models, tmp_path):
    """`routet2i serve --demo` on a free port: ready within a minute, generates, its printed admin token works,
    and it stops its worker when it exits. (The tiny models built for this module are handed over in its
    temp dir, so the demo reuses them instead of building its own.)"""
    demo_dir = tmp_path / "routet2i-demo"
    shutil.copytree(models["edge"], demo_dir / "edge-tiny-sd")
    shutil.copytree(models["cloud"], demo_dir / "cloud-tiny-sd3")
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1", "ROUTET2I_STATE_FILE": str(tmp_path / "s")}
    env.pop("ROUTET2I_ADMIN_TOKEN", None)
    port, log_path = free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    command = [sys.executable, "-m", "gateway.cli", "serve", "--demo", "--port", str(port)]
    process = spawn(command, cwd=tmp_path, env=env, log=log_path)
    try:
        wait_until_ready(url, process, timeout_s=60, log=log_path)
        ready_s = time.monotonic() - started
        text = log_path.read_text()
        token, worker_url = TOKEN_LINE.search(text)[1], WORKER_LINE.search(text)[1]
        with httpx.Client(base_url=url, timeout=60) as client:
            body = ok(client.post("/generate", json={"prompt": "a red bicycle", "size": "64x64"}))
            assert decode_png(body["data"][0]["b64_json"]).size == (64, 64)
            assert client.get("/admin/budget", headers={"Authorization": f"Bearer {token}"}).status_code == 200
            assert client.get("/admin/budget", headers=ADMIN).status_code == 403
            assert client.get("/readyz").json()["cloud"] is True
        assert token not in text.replace(f"demo: admin token: {token}", "")  # printed once, never logged again
        print(f"demo ready in {ready_s:.1f}s")
    finally:
        stop(process, timeout_s=30)
    # uvicorn re-raises SIGTERM after its graceful shutdown; the demo's worker must go with the gateway
    assert process.returncode in (0, -signal.SIGTERM), log_path.read_text()[-3000:]

    def worker_gone() -> bool:
        try:
            httpx.get(f"{worker_url}/healthz", timeout=1)
        except httpx.HTTPError:
            return True
        return False

    eventually(worker_gone, timeout=30, what="the demo worker's exit")

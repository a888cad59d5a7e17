"""The gateway when things go wrong, end to end on 127.0.0.1: the worker killed mid-request, Stability's
API (a stand-in speaking its v2beta protocol) filtering or rate limiting, and overload (a full edge
queue → 503, too many requests in flight → 429), each with Retry-After.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request

from demo.tiny import build_tiny_sd3_pipeline, build_tiny_sd_pipeline
from gateway.app import create_app
from gateway.settings import DEFAULT_ROUTER
from router_model.model import RouteT2IRouter
from tests.servers import LiveServer
from tests.test_cloud import API_KEY, stability_app
from tests.test_gateway import ADMIN, FAST, count_requests, decode_png, make_settings, ok, sample, scrape, served
from tests.test_worker import TOKEN as WORKER_TOKEN
from tests.test_worker import Gate, wait_ready, worker_app


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-models")
    return {"edge": build_tiny_sd_pipeline(root / "sd"), "cloud": build_tiny_sd3_pipeline(root / "sd3")}


@pytest.fixture(scope="module")
def router():
    return RouteT2IRouter.from_pretrained(str(DEFAULT_ROUTER), device="cpu")


async def until(condition, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        await asyncio.sleep(0.005)


# ---- the worker killed mid-run -------------------------------------------------------------------------------------
def remember_loop(app: FastAPI) -> None:
    """Keep the event loop the app serves on (to drop its connections from the test thread)."""

    @app.middleware("http")
    async def remember(request: Request, call_next):
        app.state.loop = asyncio.get_running_loop()
        return await call_next(request)


def kill(server: LiveServer) -> None:
    """What the network sees when a process dies: every connection reset, the port closed, no goodbye."""
    uvicorn_server = server.server

    async def drop() -> None:
        uvicorn_server.force_exit = uvicorn_server.should_exit = True  # no graceful shutdown, no lifespan
        for connection in list(uvicorn_server.server_state.connections):
            connection.transport.abort()

    asyncio.run_coroutine_threadsafe(drop(), server.server.config.app.state.loop).result(5)


CLOUD_CANDIDATES = ("cat", "dog", "a tree", "a photo", "sunset", "a man")


@pytest.mark.asyncio
@pytest.mark.slow
async def test_worker_killed_mid_run_falls_back_to_the_edge(models, router, tmp_path):
    app = worker_app(models["cloud"])
    remember_loop(app)
    calls = count_requests(app)
    worker = LiveServer(app).__enter__()
    gate = Gate(None)
    try:
        wait_ready(worker.url)
        settings = make_settings(
            models["edge"], tmp_path / "state.json", cloud_kind="worker", cloud_url=worker.url,
            cloud_token=WORKER_TOKEN, cloud_retries=0, rho=1.0,
        )  # fmt: skip
        with LiveServer(create_app(settings, router=router)) as gateway:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:

                async def post(prompt: str = "a harbour at dawn", **fields) -> httpx.Response:
                    return await http.post("/generate", json={"prompt": prompt, **FAST, **fields})

                assert ok(await post(route="cloud"))["route"]["backend"] == "cloud"

                engine = app.state.backend
                gate.pipeline, engine.pipeline = engine.pipeline, gate
                gate.open.clear()
                in_flight = asyncio.create_task(post(route="cloud", seed=5))
                await until(lambda: engine.in_flight() == 1, what="the cloud call to start")
                kill(worker)  # while the worker is generating
                gate.open.set()
                route = ok(await in_flight)["route"]
                assert (route["backend"], route["reason"]) == ("edge", "fallback")
                worker.__exit__(None, None, None)

                scores = {p: (await http.post("/route", json={"prompt": p})).json() for p in CLOUD_CANDIDATES}
                prompt = min(scores, key=lambda p: scores[p]["prs"])
                assert scores[prompt]["backend"] == "cloud"  # ρ = 1: α = ½, the router sends this one to the cloud ...
                after = [await post(route="cloud"), await post(prompt), await post(prompt), await post(route="cloud")]
                for response in after:
                    route = ok(response)["route"]  # ... and it is served by the edge, never a 5xx
                    assert (route["backend"], route["reason"]) == ("edge", "fallback")
                budget = (await http.get("/admin/budget", headers=ADMIN)).json()
                readyz = (await http.get("/readyz")).json()
            metrics = scrape(gateway.url)
        # Five health failures in a row open the circuit: readiness and the metrics say so (the edge still serves).
        assert readyz["ready"] is True and readyz["cloud"] is False
        assert readyz["cloud_breaker"]["state"] == "open" and readyz["cloud_breaker"]["retry_in_s"] > 0
        assert sample(metrics, "routet2i_cloud_breaker_open") == 1
        assert sample(metrics, "routet2i_cloud_breaker_consecutive_failures") >= 5
        assert calls["/v1/generate"] == 2  # the kill lost the second call; nothing reached the worker after
        assert budget["decisions"] == 6 and budget["cloud_calls"] == 1  # fallbacks are edge calls
        assert served(metrics, "edge", "fallback") == 5 and served(metrics, "cloud", "forced") == 1
        statuses = {dict(labels)["status"] for name, labels in metrics if name == "routet2i_requests_total"}
        assert statuses == {"200"}  # no 5xx, no error of any kind
        assert sample(metrics, "routet2i_backend_errors_total", backend="cloud", kind="unavailable") == 5
    finally:
        gate.open.set()
        worker.__exit__(None, None, None)


# ---- Stability's API and overload ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stability() -> Iterator[LiveServer]:
    calls: Counter = Counter()
    forms: list[dict] = []
    with LiveServer(stability_app(calls, forms)) as server:
        server.calls, server.forms = calls, forms
        yield server


@pytest.fixture(scope="module")
def gateway(models, router, stability, tmp_path_factory) -> Iterator[LiveServer]:
    """cloud_kind=stability against the stand-in; a tight edge (queue 1, no batching) and 3 requests in flight."""
    settings = make_settings(
        models["edge"], tmp_path_factory.mktemp("stability") / "state.json", cloud_kind="stability",
        stability_api_key=API_KEY, stability_base_url=stability.url, stability_model="sd3.5-large-turbo",
        cloud_retries=1, edge_max_queue=1, edge_max_batch=1, max_in_flight=3,
    )  # fmt: skip
    app = create_app(settings, router=router)
    with LiveServer(app) as server:
        server.app = app
        yield server


@pytest.fixture(scope="module")
def http(gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        yield client


def test_stability_gets_multipart_and_the_image_is_fitted(http, stability):
    body = ok(
        http.post(
            "/generate",
            json={
                "prompt": "a lighthouse at dusk",
                "negative_prompt": "blurry",
                "guidance_scale": 5,
                "n": 2,
                "seed": 42,
                "route": "cloud",
                **FAST,
            },
        )  # fmt: skip
    )
    assert (body["route"]["backend"], body["route"]["reason"], body["seed"]) == ("cloud", "forced", 42)
    images = [decode_png(item["b64_json"]) for item in body["data"]]
    assert [im.size for im in images] == [(64, 64), (64, 64)]  # 128x128 from the API, fitted to the request
    assert [im.getpixel((32, 32))[0] for im in images] == [42, 43]  # the stand-in paints the seed: seed + i
    forms = [f for f in stability.forms if f.get("prompt") == "a lighthouse at dusk"]
    assert sorted(f["seed"] for f in forms) == ["42", "43"]
    assert forms[0]["model"] == "sd3.5-large-turbo" and forms[0]["aspect_ratio"] == "1:1"
    assert forms[0]["negative_prompt"] == "blurry" and float(forms[0]["cfg_scale"]) == 5.0


def test_content_filtered_is_a_clear_400_without_fallback(http, gateway, stability):
    before = scrape(gateway.url)
    response = http.post("/generate", json={"prompt": "filtered", "route": "cloud", **FAST})
    assert response.status_code == 400
    body = response.json()
    assert body["kind"] == "moderated" and "refused" in body["detail"] and "CONTENT_FILTERED" in body["detail"]
    assert stability.calls["filtered"] == 1  # neither retried nor sent to the edge instead
    after = scrape(gateway.url)
    assert served(after, "cloud", "forced", 400) == served(before, "cloud", "forced", 400) + 1
    assert served(after, "edge", "fallback") == served(before, "edge", "fallback")


def test_rate_limit_is_retried_then_falls_back(http, gateway, stability):
    before = scrape(gateway.url)
    once = ok(http.post("/generate", json={"prompt": "busy once", "route": "cloud", "seed": 9, **FAST}))
    assert once["route"]["backend"] == "cloud" and stability.calls["busy once"] == 2  # 429, waited, retried
    always = ok(http.post("/generate", json={"prompt": "busy", "route": "cloud", **FAST}))
    assert (always["route"]["backend"], always["route"]["reason"]) == ("edge", "fallback")
    assert stability.calls["busy"] == 2  # one retry (cloud_retries=1), then the edge
    after = scrape(gateway.url)
    errors = "routet2i_backend_errors_total"
    assert sample(after, errors, backend="cloud", kind="rate_limited") == (
        sample(before, errors, backend="cloud", kind="rate_limited") + 1
    )
    assert served(after, "edge", "fallback") == served(before, "edge", "fallback") + 1


@pytest.mark.asyncio
async def test_full_edge_queue_is_503_and_too_many_in_flight_is_429(gateway):
    """Edge: one request running (held at a gate), one queued (max 1) → the next is 503. Then a slow cloud
    call makes three in flight (max 3) → the next is 429. Both with Retry-After; then everything completes."""
    edge = gateway.app.state.gateway.edge
    gate = Gate(edge.pipeline)
    edge.pipeline = gate
    gate.open.clear()
    before = scrape(gateway.url)
    body = {"prompt": "a windmill", "route": "edge", **FAST}
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
            running = asyncio.create_task(http.post("/generate", json=body))
            await until(lambda: edge.in_flight() == 1, what="the edge call to start")
            queued = asyncio.create_task(http.post("/generate", json=body))
            await until(lambda: edge.queue_depth() == 1, what="a request queued at the edge")

            busy = await http.post("/generate", json=body)
            assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1
            assert busy.json()["kind"] == "overloaded" and "busy" in busy.json()["detail"]

            slow = asyncio.create_task(http.post("/generate", json={**body, "prompt": "slow", "route": "cloud"}))
            await until(lambda: gateway.app.state.in_flight == 3, what="three requests in flight")
            refused = await http.post("/v1/images/generations", json={"prompt": "a windmill", "size": "64x64"})
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            assert "in flight" in refused.json()["detail"]

            gate.open.set()
            results = await asyncio.gather(running, queued, slow)
            assert [r.status_code for r in results] == [200, 200, 200]
            assert [r.json()["route"]["backend"] for r in results] == ["edge", "edge", "cloud"]
            assert (await http.post("/generate", json=body)).status_code == 200  # recovered
    finally:
        gate.open.set()
        edge.pipeline = gate.pipeline
    after = scrape(gateway.url)
    assert served(after, "edge", "forced", 503) == served(before, "edge", "forced", 503) + 1
    assert served(after, "none", "none", 429) == served(before, "none", "none", 429) + 1
    assert sample(after, "routet2i_backend_errors_total", backend="edge", kind="overloaded") >= 1
    assert gateway.app.state.in_flight == 0 and edge.queue_depth() == 0

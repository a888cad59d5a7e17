"""Faults through the real gateway on loopback: a misbehaving cloud worker (down, slow past the timeout,
5xx, 429, malformed bodies) and an edge pipeline that raises or runs out of memory.

For each: the gateway keeps serving, every request gets an image or a clear error, and the route
reason, the HTTP status and the Prometheus counters say what happened. (Worker killed mid-run and
Stability moderation/429 are covered by tests/test_gateway.py; Redis down by the Redis store tests.)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from backends.base import png_bytes
from backends.cloud import WorkerCloudBackend
from backends.edge import EdgeBackend
from backends.loading import load_pipeline
from demo.processes import free_port
from demo.tiny import build_tiny_sd_pipeline
from gateway.app import create_app
from gateway.settings import DEFAULT_ROUTER, Settings
from router_model.model import RouteT2IRouter
from tests.servers import LiveServer

SIZE = 64
CLOUD_TIMEOUT_S = 0.5
CONCURRENT = 4


# ---------------------------------------------------------------- the misbehaving worker


def png_b64(width: int, height: int, shade: int = 90) -> str:
    return base64.b64encode(png_bytes(Image.new("RGB", (width, height), (shade, 40, 200)))).decode()


class Misbehaving:
    """A worker-protocol app whose answer is chosen by `mode` (set by the test, read per request)."""

    MODES = ("ok", "http_500", "http_429", "slow", "not_json", "not_a_list", "bad_base64", "truncated_png",
             "wrong_size", "wrong_count")  # fmt: skip

    def __init__(self) -> None:
        self.mode = "ok"
        self.calls = 0
        self.app = FastAPI()
        self.app.post("/v1/generate")(self.generate)

    async def generate(self, request: Request) -> Response:
        self.calls += 1
        body = await request.json()
        w, h, n = body["width"], body["height"], body.get("n", 1)
        good = {"images": [png_b64(w, h)] * n, "seed": body.get("seed", 1), "model": "misbehaving"}
        match self.mode:
            case "ok":
                return JSONResponse(good)
            case "http_500":
                return JSONResponse({"detail": "CUDA error: an illegal memory access"}, status_code=500)
            case "http_429":
                return JSONResponse({"detail": "slow down"}, status_code=429, headers={"Retry-After": "60"})
            case "slow":
                await asyncio.sleep(CLOUD_TIMEOUT_S * 4)
                return JSONResponse(good)
            case "not_json":
                return Response(b"<html>502 Bad Gateway</html>", media_type="text/html")
            case "not_a_list":
                return JSONResponse({**good, "images": good["images"][0]})
            case "bad_base64":
                return JSONResponse({**good, "images": ["%%% not base64 %%%"] * n})
            case "truncated_png":
                raw = base64.b64decode(good["images"][0])
                return JSONResponse({**good, "images": [base64.b64encode(raw[: len(raw) // 2]).decode()] * n})
            case "wrong_size":
                return JSONResponse({**good, "images": [png_b64(w * 2, h)] * n})
            case "wrong_count":
                return JSONResponse({**good, "images": good["images"] * (n + 1)})
        raise AssertionError(f"unknown mode {self.mode}")


# ---------------------------------------------------------------- a pipeline that fails on demand


class FaultyPipeline:
    """The real tiny pipeline, or a raised error: `fail` once, or `oom` on every call while set."""

    def __init__(self, pipeline) -> None:
        self.pipeline = pipeline
        self.fail: BaseException | None = None
        self.oom = False
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, **kwargs):
        with self._lock:
            self.calls += 1
            error, self.fail = self.fail, None
        if error is not None:
            raise error
        if self.oom:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB")
        return self.pipeline(**kwargs)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    return load_pipeline(str(build_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny-sd"))), device="cpu")


@pytest.fixture(scope="module")
def router() -> RouteT2IRouter:
    router = RouteT2IRouter.from_pretrained(DEFAULT_ROUTER, device="cpu")
    router.score(["warm up"])
    return router


@pytest.fixture(scope="module")
def worker() -> Iterator[tuple[Misbehaving, str]]:
    misbehaving = Misbehaving()
    with LiveServer(misbehaving.app) as server:
        yield misbehaving, server.url


@pytest.fixture
def faulty(tiny_pipeline) -> FaultyPipeline:
    return FaultyPipeline(tiny_pipeline)


@contextlib.contextmanager
def gateway(router, faulty: FaultyPipeline, cloud_url: str | None, *, rho: float = 0.3) -> Iterator[str]:
    settings = Settings(rho=rho, state_file=None, edge_default_steps=1, cloud_kind="worker" if cloud_url else "none")
    edge = EdgeBackend("tiny-sd", pipeline=faulty, device="cpu", default_steps=1, batch_window_ms=1)
    cloud = None
    if cloud_url is not None:
        cloud = WorkerCloudBackend(
            cloud_url, timeout=CLOUD_TIMEOUT_S, max_retries=1, backoff_base=0.01, failure_threshold=1000
        )
    with LiveServer(create_app(settings, router=router, edge=edge, cloud=cloud)) as server:
        yield server.url


async def post_many(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return list(await asyncio.gather(*(client.post("/generate", json=b) for b in bodies)))


def body(i: int, **fields) -> dict:
    return {"prompt": f"a red bicycle leaning on wall number {i}", "size": f"{SIZE}x{SIZE}", "seed": i, **fields}


def counters(url: str) -> dict[tuple[str, frozenset], float]:
    """Every counter sample of /metrics: (name, labels) → value."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.endswith("_total")
    }


def count(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def assert_image(response: httpx.Response) -> None:
    payload = response.json()
    assert len(payload["data"]) == 1
    image = Image.open(io.BytesIO(base64.b64decode(payload["data"][0]["b64_json"])))
    assert image.size == (SIZE, SIZE)


# ---------------------------------------------------------------- cloud faults: fall back to the edge

CLOUD_FAULTS = [
    ("http_500", "http_5xx"),
    ("http_429", "rate_limited"),
    ("slow", "timeout"),
    ("not_json", "malformed"),
    ("not_a_list", "malformed"),
    ("bad_base64", "malformed"),
    ("truncated_png", "malformed"),
    ("wrong_size", "malformed"),
    ("wrong_count", "malformed"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "kind"), CLOUD_FAULTS)
def test_a_failing_cloud_falls_back_to_the_edge_for_every_request(router, faulty, worker, mode, kind):
    misbehaving, worker_url = worker
    misbehaving.mode = mode
    with gateway(router, faulty, worker_url) as url:
        responses = asyncio.run(post_many(url, [body(i, route="cloud") for i in range(CONCURRENT)]))
        for response in responses:
            assert response.status_code == 200, response.text
            assert response.headers["X-Route-Backend"] == "edge"
            assert response.headers["X-Route-Reason"] == "fallback"
            assert response.json()["route"]["reason"] == "fallback"
            assert_image(response)
        samples = counters(url)
        assert count(samples, "routet2i_backend_errors_total", backend="cloud", kind=kind) == CONCURRENT
        assert count(samples, "routet2i_requests_total", backend="edge", reason="fallback", status="200") == CONCURRENT

        misbehaving.mode = "ok"  # the gateway recovers as soon as the cloud does
        (healthy,) = asyncio.run(post_many(url, [body(99, route="cloud")]))
        assert healthy.status_code == 200 and healthy.headers["X-Route-Backend"] == "cloud"
        assert_image(healthy)


def test_cloud_down_falls_back_and_the_budget_does_not_count_it_as_a_cloud_call(router, faulty):
    nothing_there = f"http://127.0.0.1:{free_port()}"
    with gateway(router, faulty, nothing_there, rho=1.0) as url:
        prompts = [body(i) for i in range(CONCURRENT)]  # route auto: ρ = 1 sends what the router gives the cloud
        decided = [httpx.post(f"{url}/route", json={"prompt": b["prompt"]}).json()["backend"] for b in prompts]
        responses = asyncio.run(post_many(url, prompts))
        assert [r.status_code for r in responses] == [200] * CONCURRENT
        assert all(r.headers["X-Route-Backend"] == "edge" for r in responses)
        wanted_cloud = decided.count("cloud")
        assert wanted_cloud > 0, "the shipped router should send some of these prompts to the cloud at ρ = 1"
        assert [r.headers["X-Route-Reason"] for r in responses].count("fallback") == wanted_cloud
        samples = counters(url)
        assert count(samples, "routet2i_backend_errors_total", backend="cloud", kind="unavailable") == wanted_cloud
        budget = httpx.get(f"{url}/v1/status").json()["budget"]
        assert budget["cloud_calls"] == 0 and budget["decisions"] == CONCURRENT


def test_cloud_timeout_is_bounded_by_the_client_timeout(router, faulty, worker):
    misbehaving, worker_url = worker
    misbehaving.mode = "slow"
    with gateway(router, faulty, worker_url) as url:
        started = time.perf_counter()
        response = httpx.post(f"{url}/generate", json=body(1, route="cloud"), timeout=30)
        elapsed = time.perf_counter() - started
    misbehaving.mode = "ok"
    assert response.status_code == 200 and response.headers["X-Route-Reason"] == "fallback"
    # two attempts of CLOUD_TIMEOUT_S each plus the edge, far below the worker's own delay times two
    assert elapsed < 2 * CLOUD_TIMEOUT_S + 3.0


# ---------------------------------------------------------------- edge faults: clear 503s, then recovery


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (RuntimeError("scheduler exploded"), "edge_failure"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB"), "edge_oom"),
    ],
)
def test_an_edge_failure_is_a_clear_503_and_the_edge_keeps_serving(router, faulty, error, kind):
    with gateway(router, faulty, None) as url:
        faulty.fail = error
        failed = httpx.post(f"{url}/generate", json=body(1, route="edge"), timeout=30)
        assert failed.status_code == 503
        assert int(failed.headers["Retry-After"]) >= 1
        payload = failed.json()
        assert payload["kind"] == kind and "edge model failed" in payload["detail"]
        samples = counters(url)
        assert count(samples, "routet2i_backend_errors_total", backend="edge", kind=kind) == 1
        assert count(samples, "routet2i_requests_total", backend="edge", reason="forced", status="503") == 1

        recovered = httpx.post(f"{url}/generate", json=body(2, route="edge"), timeout=30)
        assert recovered.status_code == 200 and recovered.headers["X-Route-Backend"] == "edge"
        assert_image(recovered)


def test_an_edge_out_of_memory_on_a_batch_fails_no_request(router, faulty):
    """A batch that runs out of memory is split; with memory for one image at a time, all are served."""

    class OneAtATime(FaultyPipeline):
        def __call__(self, **kwargs):
            if len(kwargs["prompt"]) > 1:
                raise torch.OutOfMemoryError("CUDA out of memory")
            return super().__call__(**kwargs)

    limited = OneAtATime(faulty.pipeline)
    with gateway(router, limited, None) as url:
        responses = asyncio.run(post_many(url, [body(i, route="edge") for i in range(CONCURRENT)]))
        assert [r.status_code for r in responses] == [200] * CONCURRENT
        for response in responses:
            assert_image(response)
        assert count(counters(url), "routet2i_backend_errors_total", backend="edge", kind="edge_oom") == 0


def test_edge_always_out_of_memory_gives_every_request_a_503(router, faulty):
    faulty.oom = True
    with gateway(router, faulty, None) as url:
        responses = asyncio.run(post_many(url, [body(i, route="edge") for i in range(CONCURRENT)]))
        assert [r.status_code for r in responses] == [503] * CONCURRENT
        assert all(r.json()["kind"] == "edge_oom" and r.headers.get("Retry-After") for r in responses)
        assert count(counters(url), "routet2i_backend_errors_total", backend="edge", kind="edge_oom") == CONCURRENT
        assert httpx.get(f"{url}/healthz").status_code == 200


def test_cloud_and_edge_both_failing_is_a_503_that_names_the_edge(router, faulty, worker):
    misbehaving, worker_url = worker
    misbehaving.mode = "http_500"
    faulty.oom = True
    with gateway(router, faulty, worker_url) as url:
        response = httpx.post(f"{url}/generate", json=body(1, route="cloud"), timeout=30)
        samples = counters(url)
    misbehaving.mode = "ok"
    assert response.status_code == 503 and response.json()["kind"] == "edge_oom"
    assert count(samples, "routet2i_backend_errors_total", backend="cloud", kind="http_5xx") == 1
    assert count(samples, "routet2i_backend_errors_total", backend="edge", kind="edge_oom") == 1
    assert count(samples, "routet2i_requests_total", backend="edge", reason="fallback", status="503") == 1

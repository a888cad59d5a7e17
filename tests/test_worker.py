"""The cloud worker (tiny SD3 pipeline) on a real uvicorn server, and WorkerCloudBackend against it."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import numpy as np
import pytest

from backends.base import BackendError, BackendOverloaded, BackendUnavailable, GenerationRequest
from backends.cloud import WorkerCloudBackend
from backends.worker import create_worker_app
from demo.tiny import build_tiny_sd3_pipeline
from tests.servers import LiveServer

TOKEN = "worker-secret"


class Gate:
    """The worker's real pipeline behind a gate, to hold a call while the test fills the queue."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.open = threading.Event()
        self.open.set()

    def __call__(self, **kwargs):
        assert self.open.wait(30), "the test never opened the gate"
        return self.pipeline(**kwargs)


@pytest.fixture(scope="module")
def sd3_path(tmp_path_factory):
    return build_tiny_sd3_pipeline(tmp_path_factory.mktemp("tiny-sd3"))


def worker_app(path, **options):
    options = {"token": TOKEN, "device": "cpu", "default_steps": 2, "max_queue": 2, "max_batch": 1, **options}
    return create_worker_app(str(path), model_name="tiny-sd3", **options)


def wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{url}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "worker never became ready"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def worker(sd3_path):
    with LiveServer(worker_app(sd3_path)) as server:
        wait_ready(server.url)
        yield server


def client(url: str, token: str | None = TOKEN, **options) -> WorkerCloudBackend:
    options = {"max_retries": 2, "backoff_base": 0.01, "backoff_max": 0.05, **options}
    return WorkerCloudBackend(url, token=token, **options)


def req(seed: int | None = None, **fields) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a castle at dusk", "width": 64, "height": 48, "seed": seed, **fields})


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_health_and_readiness(worker):
    assert httpx.get(f"{worker.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{worker.url}/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == "tiny-sd3"


@pytest.mark.asyncio
async def test_generate_size_seed_and_reproducibility(worker):
    backend = client(worker.url)
    try:
        first = await backend.generate(req(seed=11))
        again = await backend.generate(req(seed=11))
        other = await backend.generate(req(seed=12))
        two = await backend.generate(req(seed=11, n=2))
        drawn = await backend.generate(req())
    finally:
        await backend.aclose()
    assert first.backend == "cloud" and first.model == "tiny-sd3" and first.seed == 11
    assert [im.size for im in first.images] == [(64, 48)]
    assert np.array_equal(pixels(first.images[0]), pixels(again.images[0]))
    assert not np.array_equal(pixels(first.images[0]), pixels(other.images[0]))
    assert len(two.images) == 2 and two.seed == 11
    assert np.abs(pixels(two.images[1]) - pixels(other.images[0])).max() <= 2  # image i uses seed + i
    assert isinstance(drawn.seed, int) and drawn.seed > 0
    assert first.timings["worker_inference_s"] > 0


@pytest.mark.asyncio
async def test_wrong_or_missing_token_is_rejected_without_retries(worker):
    for token in ("wrong", None):
        backend = client(worker.url, token=token)
        try:
            with pytest.raises(BackendError) as info:
                await backend.generate(req(seed=1))
        finally:
            await backend.aclose()
        assert info.value.kind == "http_4xx" and "401" in str(info.value)
        assert backend.circuit_state == "closed"
    response = httpx.post(f"{worker.url}/v1/generate", json={"prompt": "x"}, headers={"authorization": "Bearer nope"})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


def test_bad_input_is_422_naming_the_field(worker):
    auth = {"authorization": f"Bearer {TOKEN}"}
    cases = [
        ({"prompt": "x", "width": 60}, "multiple of 8"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "n": 9}, "n"),
        ({"prompt": "x", "steps": 3}, "steps"),
    ]
    for body, needle in cases:
        response = httpx.post(f"{worker.url}/v1/generate", json=body, headers=auth)
        assert response.status_code == 422, body
        assert needle in response.text


@pytest.mark.asyncio
async def test_bad_input_through_the_client_carries_the_message(worker):
    backend = client(worker.url)
    try:
        with pytest.raises(BackendError) as info:
            await backend.generate(req(seed=1, width=60))
    finally:
        await backend.aclose()
    assert info.value.kind == "http_4xx" and "width" in str(info.value) and "multiple of 8" in str(info.value)


@pytest.mark.asyncio
async def test_full_queue_is_503_with_retry_after(worker):
    engine = worker.server.config.app.state.backend
    gate = Gate(engine.pipeline)
    engine.pipeline, real = gate, engine.pipeline
    gate.open.clear()
    auth = {"authorization": f"Bearer {TOKEN}"}
    body = {"prompt": "x", "width": 64, "height": 64}
    try:
        async with httpx.AsyncClient(base_url=worker.url, headers=auth, timeout=30) as http:
            running = asyncio.create_task(http.post("/v1/generate", json=body))
            await _wait(lambda: engine.in_flight() == 1)
            queued = [asyncio.create_task(http.post("/v1/generate", json=body)) for _ in range(2)]
            await _wait(lambda: engine.queue_depth() == 2)
            refused = await http.post("/v1/generate", json=body)
            assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1

            backend = client(worker.url, retry_after_cap=0)  # don't wait: report the overload at once
            try:
                with pytest.raises(BackendOverloaded) as info:
                    await backend.generate(req(seed=1))
            finally:
                await backend.aclose()
            assert info.value.kind == "rate_limited" and info.value.retry_after >= 1

            gate.open.set()
            assert [r.status_code for r in await asyncio.gather(running, *queued)] == [200, 200, 200]
    finally:
        gate.open.set()
        engine.pipeline = real


async def _wait(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


@pytest.mark.asyncio
@pytest.mark.slow
async def test_killed_worker_then_circuit_opens_and_half_opens(sd3_path):
    server = LiveServer(worker_app(sd3_path)).__enter__()
    port = server.port
    wait_ready(server.url)
    attempts: list[str] = []
    backend = client(server.url, max_retries=2, failure_threshold=2, cooldown_s=0.5)

    async def count(request: httpx.Request) -> None:
        attempts.append(request.url.path)

    backend.client.event_hooks["request"].append(count)
    try:
        await backend.generate(req(seed=1))
        server.__exit__(None, None, None)  # the worker goes away

        for _ in range(2):  # two failed requests, each after 3 attempts
            attempts.clear()
            with pytest.raises(BackendUnavailable) as info:
                await backend.generate(req(seed=1))
            assert info.value.kind == "unavailable" and len(attempts) == 3
        assert backend.circuit_state == "open"

        attempts.clear()
        with pytest.raises(BackendUnavailable, match="circuit open") as info:
            await backend.generate(req(seed=1))
        assert attempts == [] and 0 < info.value.retry_after <= 0.5  # failed fast

        await asyncio.sleep(0.55)
        assert backend.circuit_state == "half_open"
        with pytest.raises(BackendUnavailable):
            await backend.generate(req(seed=1))  # the trial fails: open again
        assert backend.circuit_state == "open"

        server = LiveServer(worker_app(sd3_path), port=port).__enter__()  # the worker comes back
        wait_ready(server.url)
        await asyncio.sleep(0.55)
        assert backend.circuit_state == "half_open"
        result = await backend.generate(req(seed=1))  # the trial succeeds: closed
        assert result.images[0].size == (64, 48)
        assert backend.circuit_state == "closed"
    finally:
        await backend.aclose()
        server.__exit__(None, None, None)


def test_failed_load_keeps_the_worker_alive_but_not_ready(tmp_path):
    with LiveServer(worker_app(tmp_path / "no-such-model")) as server:
        deadline = time.monotonic() + 20
        while (ready := httpx.get(f"{server.url}/readyz")).json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        response = httpx.post(
            f"{server.url}/v1/generate", json={"prompt": "x"}, headers={"authorization": f"Bearer {TOKEN}"}
        )
        assert response.status_code == 503 and "retry-after" in response.headers


def test_empty_token_is_a_configuration_error(sd3_path):
    with pytest.raises(ValueError, match="ROUTET2I_WORKER_TOKEN"):
        worker_app(sd3_path, token=" ")

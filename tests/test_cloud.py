"""Cloud clients against real HTTP servers on 127.0.0.1: a stand-in of Stability's v2beta SD3 endpoint.

(The worker protocol is tested against the real worker in test_worker.py.)
"""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import time
from collections import Counter

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image

from backends.base import BackendError, BackendOverloaded, BackendUnavailable, ContentModerated, GenerationRequest
from backends.cloud import (
    CircuitBreaker,
    StabilityCloudBackend,
    nearest_aspect_ratio,
    parse_retry_after,
    stability_form,
)
from tests.servers import LiveServer

# ---- a stand-in of POST /v2beta/stable-image/generate/sd3 -------------------------------------------------------
API_KEY = "sk-test"
SIZES = {  # Stability's output sizes per aspect ratio, divided by 8 to keep the test fast
    "1:1": (128, 128),
    "16:9": (168, 96),
    "21:9": (192, 80),
    "2:3": (104, 152),
    "3:2": (152, 104),
    "4:5": (112, 136),
    "5:4": (136, 112),
    "9:16": (96, 168),
    "9:21": (80, 192),
}
MODELS = {"sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium"}
ALLOWED_FIELDS = {"prompt", "model", "mode", "aspect_ratio", "negative_prompt", "seed", "output_format", "cfg_scale"}


def _png_b64(size: tuple[int, int], seed: int) -> str:
    """A solid image whose red channel encodes the seed, so tests can tell which seed made it."""
    buf = io.BytesIO()
    Image.new("RGB", size, (seed % 256, 10, 20)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse({"id": "x", "name": "bad_request", "errors": [message]}, status_code=400)


def stability_app(calls: Counter, forms: list[dict]) -> FastAPI:
    app = FastAPI()

    @app.post("/v2beta/stable-image/generate/sd3")
    async def sd3(request: Request):
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return JSONResponse({"name": "unauthorized", "errors": ["missing or invalid API key"]}, status_code=401)
        if request.headers.get("accept") != "application/json":
            return _bad_request("accept must be application/json for base64 output")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return _bad_request("the body must be multipart/form-data")
        form = {key: value for key, value in (await request.form()).items()}
        forms.append(form)
        if not all(isinstance(v, str) for v in form.values()):
            return _bad_request("no files are expected")
        if unknown := set(form) - ALLOWED_FIELDS:
            return _bad_request(f"unknown fields {sorted(unknown)}")
        if not form.get("prompt"):
            return _bad_request("prompt: required")
        if form.get("model") not in MODELS or form.get("mode") != "text-to-image":
            return _bad_request("model/mode: invalid")
        if form.get("aspect_ratio") not in SIZES or form.get("output_format") != "png":
            return _bad_request("aspect_ratio/output_format: invalid")
        seed = int(form.get("seed", "0"))
        if not 0 <= seed <= 4294967294:
            return _bad_request("seed: out of range")
        if "cfg_scale" in form and not 1 <= float(form["cfg_scale"]) <= 10:
            return _bad_request("cfg_scale: out of range")

        prompt = form["prompt"]
        calls[prompt] += 1
        image = _png_b64(SIZES[form["aspect_ratio"]], seed)
        if prompt == "filtered":
            return {"image": image, "finish_reason": "CONTENT_FILTERED", "seed": seed}
        if prompt == "forbidden":
            return JSONResponse(
                {"name": "content_moderation", "errors": ["Your request was flagged by our content moderation system"]},
                status_code=403,
            )
        if prompt == "too long":
            return _bad_request("prompt: must be at most 10000 characters")
        if prompt == "busy once" and calls[prompt] == 1 or prompt == "busy":
            return JSONResponse({"errors": ["rate limited"]}, status_code=429, headers={"Retry-After": "1"})
        if prompt == "busy long":
            return JSONResponse({"errors": ["rate limited"]}, status_code=429, headers={"Retry-After": "60"})
        if prompt == "broken":
            return JSONResponse({"name": "internal_error", "errors": ["something broke"]}, status_code=500)
        if prompt == "garbage":
            return Response(b'{"image": "abc', media_type="application/json")
        if prompt == "bad image":
            return {"image": "!!not base64!!", "finish_reason": "SUCCESS", "seed": seed}
        if prompt == "slow":
            await asyncio.sleep(1.0)
        return {"image": image, "finish_reason": "SUCCESS", "seed": seed}

    return app


@pytest.fixture(scope="module")
def stability():
    calls: Counter = Counter()
    forms: list[dict] = []
    with LiveServer(stability_app(calls, forms)) as server:
        server.calls, server.forms = calls, forms
        yield server


def _client(server: LiveServer, **options) -> StabilityCloudBackend:
    options = {"max_retries": 2, "backoff_base": 0.01, "backoff_max": 0.05, **options}
    return StabilityCloudBackend(API_KEY, model="sd3.5-large-turbo", base_url=server.url, **options)


# ---- pure helpers --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "ratio"),
    [((512, 512), "1:1"), ((1920, 1080), "16:9"), ((768, 1024), "4:5"), ((2048, 512), "21:9"), ((512, 768), "2:3")],
)
def test_nearest_aspect_ratio(size, ratio):
    assert nearest_aspect_ratio(*size) == ratio


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: retry now


def test_circuit_breaker_opens_then_half_opens_one_trial():
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=10, clock=lambda: now[0])
    assert breaker.acquire() is False
    breaker.record(healthy=False)
    assert breaker.state == "closed"
    breaker.acquire()
    breaker.record(healthy=False)
    assert breaker.state == "open"
    with pytest.raises(BackendUnavailable) as info:
        breaker.acquire()
    assert info.value.retry_after == pytest.approx(10)
    now[0] = 10.0
    assert breaker.state == "half_open"
    assert breaker.acquire() is True  # the one trial
    with pytest.raises(BackendUnavailable):
        breaker.acquire()  # everyone else still fails fast
    breaker.record(healthy=False)  # failed trial: a new cooldown
    assert breaker.state == "open"
    now[0] = 20.0
    assert breaker.acquire() is True
    breaker.record(healthy=True)
    assert breaker.state == "closed" and breaker.acquire() is False


def test_constructor_rejects_unknown_model_and_missing_key():
    with pytest.raises(ValueError, match="sd3.5-large-turbo"):
        StabilityCloudBackend("key", model="sd3-ultra")
    with pytest.raises(ValueError, match="api_key"):
        StabilityCloudBackend("")


# ---- Stability against the stand-in server ---------------------------------------------------------------------
@pytest.mark.asyncio
async def test_success_sends_the_form_and_fits_the_size(stability):
    backend = _client(stability)
    try:
        request = GenerationRequest(
            prompt="a lighthouse", negative_prompt="blurry", width=96, height=64, seed=42, guidance_scale=30
        )
        result = await backend.generate(request)
    finally:
        await backend.aclose()
    form = stability.forms[-1]
    assert form["prompt"] == "a lighthouse" and form["negative_prompt"] == "blurry"
    assert form["model"] == "sd3.5-large-turbo" and form["mode"] == "text-to-image"
    assert form["aspect_ratio"] == "3:2" and form["output_format"] == "png" and form["seed"] == "42"
    assert float(form["cfg_scale"]) == 10.0  # clamped into the API's range
    assert result.backend == "cloud" and result.model == "sd3.5-large-turbo" and result.seed == 42
    assert [im.size for im in result.images] == [(96, 64)]
    assert result.images[0].getpixel((48, 32))[0] == 42


@pytest.mark.asyncio
async def test_n_images_are_concurrent_calls_with_consecutive_seeds(stability):
    backend = _client(stability)
    try:
        result = await backend.generate(GenerationRequest(prompt="three cats", n=3, width=64, height=64, seed=100))
    finally:
        await backend.aclose()
    assert stability.calls["three cats"] == 3
    assert [im.getpixel((0, 0))[0] for im in result.images] == [100, 101, 102]
    assert all(im.size == (64, 64) for im in result.images)


@pytest.mark.asyncio
@pytest.mark.parametrize("prompt", ["filtered", "forbidden"])
async def test_moderation_is_mapped(stability, prompt):
    backend = _client(stability)
    try:
        with pytest.raises(ContentModerated) as info:
            await backend.generate(GenerationRequest(prompt=prompt, width=64, height=64))
    finally:
        await backend.aclose()
    assert info.value.kind == "moderated"
    assert stability.calls[prompt] == 1  # never retried
    assert backend.circuit_state == "closed"


@pytest.mark.asyncio
async def test_client_error_carries_the_provider_message(stability):
    backend = _client(stability)
    try:
        with pytest.raises(BackendError) as info:
            await backend.generate(GenerationRequest(prompt="too long", width=64, height=64))
    finally:
        await backend.aclose()
    assert info.value.kind == "http_4xx" and "at most 10000 characters" in str(info.value)
    assert stability.calls["too long"] == 1


@pytest.mark.asyncio
async def test_wrong_api_key_is_http_4xx(stability):
    backend = StabilityCloudBackend("wrong", base_url=stability.url, backoff_base=0.01)
    try:
        with pytest.raises(BackendError) as info:
            await backend.generate(GenerationRequest(prompt="x", width=64, height=64))
    finally:
        await backend.aclose()
    assert info.value.kind == "http_4xx" and "401" in str(info.value)


@pytest.mark.asyncio
async def test_429_is_retried_after_retry_after(stability):
    backend = _client(stability)
    started = time.monotonic()
    try:
        result = await backend.generate(GenerationRequest(prompt="busy once", width=64, height=64, seed=3))
    finally:
        await backend.aclose()
    assert stability.calls["busy once"] == 2
    assert time.monotonic() - started >= 0.95  # waited what Retry-After asked
    assert result.images[0].getpixel((0, 0))[0] == 3


@pytest.mark.asyncio
async def test_429_exhausted_or_too_long_is_overloaded(stability):
    backend = _client(stability, max_retries=1, retry_after_cap=5)
    try:
        with pytest.raises(BackendOverloaded) as info:
            await backend.generate(GenerationRequest(prompt="busy", width=64, height=64))
        assert info.value.kind == "rate_limited" and info.value.retry_after == 1
        assert stability.calls["busy"] == 2
        started = time.monotonic()
        with pytest.raises(BackendOverloaded) as info:
            await backend.generate(GenerationRequest(prompt="busy long", width=64, height=64))
        assert info.value.retry_after == 60 and time.monotonic() - started < 0.5  # over the cap: not waited for
        assert stability.calls["busy long"] == 1
    finally:
        await backend.aclose()
    assert backend.circuit_state == "closed"  # being rate limited is not a broken backend


@pytest.mark.asyncio
async def test_5xx_is_retried_then_reported_and_opens_the_circuit(stability):
    backend = _client(stability, max_retries=2, failure_threshold=2, cooldown_s=60)
    try:
        for expected_calls in (3, 6):
            with pytest.raises(BackendError) as info:
                await backend.generate(GenerationRequest(prompt="broken", width=64, height=64))
            assert info.value.kind == "http_5xx" and "something broke" in str(info.value)
            assert stability.calls["broken"] == expected_calls
        assert backend.circuit_state == "open"
        with pytest.raises(BackendUnavailable, match="circuit open"):
            await backend.generate(GenerationRequest(prompt="broken", width=64, height=64))
        assert stability.calls["broken"] == 6  # failed fast, no HTTP call
    finally:
        await backend.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize("prompt", ["garbage", "bad image"])
async def test_malformed_responses(stability, prompt):
    backend = _client(stability)
    try:
        with pytest.raises(BackendError) as info:
            await backend.generate(GenerationRequest(prompt=prompt, width=64, height=64))
    finally:
        await backend.aclose()
    assert info.value.kind == "malformed"


@pytest.mark.asyncio
async def test_timeouts_are_retried_then_unavailable(stability):
    backend = _client(stability, timeout=0.2, max_retries=1)
    try:
        with pytest.raises(BackendUnavailable) as info:
            await backend.generate(GenerationRequest(prompt="slow", width=64, height=64))
    finally:
        await backend.aclose()
    assert info.value.kind == "timeout"
    assert stability.calls["slow"] == 2


@pytest.mark.asyncio
async def test_nothing_listening_is_unavailable():
    with socket.socket() as sock:  # a port that was free a moment ago
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = StabilityCloudBackend(API_KEY, base_url=f"http://127.0.0.1:{port}", max_retries=1, backoff_base=0.01)
    try:
        with pytest.raises(BackendUnavailable) as info:
            await backend.generate(GenerationRequest(prompt="x", width=64, height=64))
    finally:
        await backend.aclose()
    assert info.value.kind == "unavailable"


def test_httpx_sends_multipart_for_plain_fields():
    """Stability rejects urlencoded bodies; fields without filenames must still go as multipart/form-data."""
    form = stability_form(GenerationRequest(prompt="p", width=64, height=64), model="sd3.5-large", seed=1)
    request = httpx.Request("POST", "http://x/", files=form)
    assert request.headers["content-type"].startswith("multipart/form-data")
    assert b'name="prompt"\r\n\r\np\r\n' in request.read()

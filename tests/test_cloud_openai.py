"""The `openai` cloud kind against a stand-in of OpenAI's `POST /v1/images/generations` (real uvicorn on 127.0.0.1),
alone and through the gateway with `cloud_kind=openai`."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections import Counter

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

from backends.base import BackendError, BackendOverloaded, BackendUnavailable, ContentModerated, GenerationRequest
from backends.cloud import OpenAICloudBackend, openai_size
from gateway.app import build_cloud, create_app
from tests.servers import LiveServer
from tests.standins import HashScorer, InstantBackend, standin_settings
from tests.test_gateway import decode_png, sample, scrape, served

API_KEY = "sk-openai-test"
SIZES = {  # what each model accepts (the stand-in answers at 1/16 of the size, to keep the test fast)
    "dall-e-2": {"256x256", "512x512", "1024x1024"},
    "dall-e-3": {"1024x1024", "1792x1024", "1024x1792"},
    "gpt-image-1": {"1024x1024", "1536x1024", "1024x1536", "auto"},
}
FIELDS = {"model", "prompt", "n", "size", "response_format", "quality", "style", "user", "background"}


def _error(status: int, message: str, code: str | None, kind: str = "invalid_request_error", **headers: str):
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers or None)


def _png_b64(width: int, height: int, red: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (red % 256, 10, 20)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def openai_app(calls: Counter, bodies: list[dict]) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/images/generations")
    async def generations(request: Request):
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return _error(401, "Incorrect API key provided", "invalid_api_key")
        body = await request.json()
        bodies.append(body)
        model, prompt, n = body.get("model"), body.get("prompt"), body.get("n", 1)
        if unknown := set(body) - FIELDS:
            return _error(400, f"Unknown parameter: '{sorted(unknown)[0]}'.", "unknown_parameter")
        if not isinstance(prompt, str) or not prompt:
            return _error(400, "prompt: required", None)
        if model == "gpt-image-1" and "response_format" in body:
            return _error(400, "Unknown parameter: 'response_format'.", "unknown_parameter")
        if model != "gpt-image-1" and body.get("response_format") != "b64_json":
            return _error(400, "this stand-in only returns b64_json", None)
        if model == "dall-e-3" and n != 1:
            return _error(400, "You must provide n=1 for this model.", None)
        size = body.get("size", "1024x1024")
        if model in SIZES and size not in SIZES[model]:
            return _error(400, f"'{size}' is not one of {sorted(SIZES[model])} - 'size'", None)
        calls[prompt] += 1
        if prompt == "forbidden":
            return _error(400, "Your request was rejected by our safety system.", "content_policy_violation")
        if prompt == "blocked":
            return _error(400, "Your request was rejected by the safety system.", "moderation_blocked")
        if prompt == "busy once" and calls[prompt] == 1 or prompt == "busy":
            return _error(429, "Rate limit reached for images per minute", None, "requests", **{"Retry-After": "1"})
        if prompt == "no quota":
            return _error(429, "You exceeded your current quota", "insufficient_quota", "insufficient_quota")
        if prompt == "broken":
            return _error(500, "The server had an error while processing your request.", None, "server_error")
        if prompt == "short":
            return {"created": 1, "data": []}
        if prompt == "slow":
            await asyncio.sleep(1.0)
        width, height = (int(x) for x in size.split("x"))
        scale = 16 if model in SIZES else 1
        data = [{"b64_json": _png_b64(width // scale, height // scale, calls[prompt] * 10 + i)} for i in range(n)]
        return {"created": int(time.time()), "data": data}

    return app


@pytest.fixture(scope="module")
def openai_server():
    calls: Counter = Counter()
    bodies: list[dict] = []
    with LiveServer(openai_app(calls, bodies)) as server:
        server.calls, server.bodies = calls, bodies
        yield server


def _client(server: LiveServer, model: str = "dall-e-3", **options) -> OpenAICloudBackend:
    options = {"max_retries": 2, "backoff_base": 0.01, "backoff_max": 0.05, **options}
    return OpenAICloudBackend(API_KEY, model=model, base_url=server.url, **options)


async def _generate(server: LiveServer, request: GenerationRequest, model: str = "dall-e-3", **options):
    backend = _client(server, model, **options)
    try:
        return await backend.generate(request), backend
    finally:
        await backend.aclose()


# ---- pure helpers --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "size", "asked"),
    [
        ("dall-e-3", (512, 512), "1024x1024"), ("dall-e-3", (1920, 1080), "1792x1024"),
        ("dall-e-3", (512, 768), "1024x1792"), ("gpt-image-1", (768, 512), "1536x1024"),
        ("gpt-image-1-mini", (512, 1024), "1024x1536"), ("dall-e-2", (200, 100), "256x256"),
        ("dall-e-2", (512, 384), "512x512"), ("dall-e-2", (2048, 2048), "1024x1024"),
        ("my-local-flux", (640, 384), "640x384"),
    ],
)  # fmt: skip
def test_size_mapping(model, size, asked):
    assert openai_size(model, *size) == asked


def test_constructor_needs_a_key_and_settings_name_it(tmp_path):
    with pytest.raises(ValueError, match="ROUTET2I_OPENAI_API_KEY"):
        OpenAICloudBackend("")
    with pytest.raises(ValueError, match="ROUTET2I_OPENAI_API_KEY"):
        build_cloud(standin_settings(tmp_path, cloud_kind="openai"))


# ---- against the stand-in ------------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_dall_e_3_sends_one_image_calls_and_fits_the_size(openai_server):
    request = GenerationRequest(prompt="two lighthouses", n=2, width=96, height=64, seed=5, negative_prompt="fog")
    result, _ = await _generate(openai_server, request)
    bodies = [b for b in openai_server.bodies if b["prompt"] == "two lighthouses"]
    assert len(bodies) == 2 and openai_server.calls["two lighthouses"] == 2  # n=1 per call for dall-e-3
    assert bodies[0] == {
        "model": "dall-e-3",
        "prompt": "two lighthouses",
        "n": 1,
        "size": "1792x1024",
        "response_format": "b64_json",
    }  # fmt: skip  (no seed, negative prompt, steps or guidance: the API has none)
    assert result.backend == "cloud" and result.model == "dall-e-3" and result.seed == 5
    assert [im.size for im in result.images] == [(96, 64), (96, 64)]
    assert result.png is None  # scaled and cropped: re-encoded by the gateway


@pytest.mark.asyncio
async def test_gpt_image_gets_n_in_one_call_and_no_response_format(openai_server):
    result, _ = await _generate(openai_server, GenerationRequest(prompt="three owls", n=3, width=64, height=64),
                                model="gpt-image-1")  # fmt: skip
    body = next(b for b in openai_server.bodies if b["prompt"] == "three owls")
    assert body["n"] == 3 and "response_format" not in body and body["size"] == "1024x1024"
    assert openai_server.calls["three owls"] == 1
    assert [im.getpixel((0, 0))[0] for im in result.images] == [10, 11, 12] and result.images[0].size == (64, 64)


@pytest.mark.asyncio
async def test_a_compatible_server_gets_the_exact_size_and_its_png_is_passed_on(openai_server):
    result, _ = await _generate(openai_server, GenerationRequest(prompt="a fox", width=80, height=48),
                                model="my-local-flux")  # fmt: skip
    assert openai_server.bodies[-1]["size"] == "80x48"
    assert result.png is not None and Image.open(io.BytesIO(result.png[0])).size == (80, 48)


@pytest.mark.asyncio
@pytest.mark.parametrize("prompt", ["forbidden", "blocked"])
async def test_moderation_is_content_moderated_never_retried(openai_server, prompt):
    backend = _client(openai_server)
    try:
        with pytest.raises(ContentModerated) as info:
            await backend.generate(GenerationRequest(prompt=prompt, width=64, height=64))
    finally:
        await backend.aclose()
    assert info.value.kind == "moderated" and "safety system" in str(info.value)
    assert openai_server.calls[prompt] == 1 and backend.circuit_state == "closed"


@pytest.mark.asyncio
async def test_wrong_key_and_short_answers(openai_server):
    backend = OpenAICloudBackend("wrong", model="dall-e-3", base_url=openai_server.url, backoff_base=0.01)
    try:
        with pytest.raises(BackendError) as info:
            await backend.generate(GenerationRequest(prompt="x", width=64, height=64))
    finally:
        await backend.aclose()
    assert info.value.kind == "http_4xx" and "401" in str(info.value) and "Incorrect API key" in str(info.value)
    with pytest.raises(BackendError) as info:
        await _generate(openai_server, GenerationRequest(prompt="short", width=64, height=64))
    assert info.value.kind == "malformed"


@pytest.mark.asyncio
async def test_429_is_retried_after_retry_after_but_no_quota_is_not(openai_server):
    started = time.monotonic()
    result, backend = await _generate(openai_server, GenerationRequest(prompt="busy once", width=64, height=64))
    assert openai_server.calls["busy once"] == 2 and time.monotonic() - started >= 0.95
    assert result.images[0].size == (64, 64)
    with pytest.raises(BackendOverloaded) as info:
        await _generate(openai_server, GenerationRequest(prompt="busy", width=64, height=64), max_retries=1)
    assert info.value.kind == "rate_limited" and info.value.retry_after == 1 and openai_server.calls["busy"] == 2
    with pytest.raises(BackendOverloaded) as info:
        await _generate(openai_server, GenerationRequest(prompt="no quota", width=64, height=64))
    assert info.value.kind == "quota" and "quota" in str(info.value) and openai_server.calls["no quota"] == 1


@pytest.mark.asyncio
async def test_5xx_and_timeouts_are_retried_and_open_the_circuit(openai_server):
    backend = _client(openai_server, max_retries=1, failure_threshold=2, cooldown_s=60, timeout=0.3)
    try:
        with pytest.raises(BackendError) as info:
            await backend.generate(GenerationRequest(prompt="broken", width=64, height=64))
        assert info.value.kind == "http_5xx" and openai_server.calls["broken"] == 2
        with pytest.raises(BackendUnavailable) as info:
            await backend.generate(GenerationRequest(prompt="slow", width=64, height=64))
        assert info.value.kind == "timeout" and openai_server.calls["slow"] == 2
        assert backend.circuit_state == "open"
        with pytest.raises(BackendUnavailable, match="circuit open"):
            await backend.generate(GenerationRequest(prompt="broken", width=64, height=64))
        assert openai_server.calls["broken"] == 2  # failed fast
    finally:
        await backend.aclose()


# ---- through the gateway, cloud_kind=openai ------------------------------------------------------------------------
def test_gateway_with_cloud_kind_openai(openai_server, tmp_path):
    settings = standin_settings(
        tmp_path, cloud_kind="openai", openai_api_key=API_KEY, openai_base_url=openai_server.url,
        openai_model="gpt-image-1", rho=1.0, cloud_retries=1,
    )  # fmt: skip
    cloud = build_cloud(settings)
    assert isinstance(cloud, OpenAICloudBackend) and cloud.model == "gpt-image-1"
    app = create_app(settings, router=HashScorer(), edge=InstantBackend("edge"), cloud=cloud)
    with LiveServer(app) as gateway, httpx.Client(base_url=gateway.url, timeout=30) as http:
        response = http.post("/generate", json={"prompt": "a red kite", "size": "96x64", "route": "cloud"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["route"]["backend"], body["route"]["reason"]) == ("cloud", "forced")
        assert decode_png(body["data"][0]["b64_json"]).size == (96, 64)
        assert openai_server.bodies[-1]["size"] == "1536x1024" and openai_server.bodies[-1]["model"] == "gpt-image-1"

        refused = http.post("/generate", json={"prompt": "forbidden", "size": "64x64", "route": "cloud"})
        assert refused.status_code == 400 and refused.json()["kind"] == "moderated"
        limited = http.post("/generate", json={"prompt": "busy", "size": "64x64", "route": "cloud"})
        assert limited.status_code == 200 and limited.json()["route"]["reason"] == "fallback"
        metrics = scrape(gateway.url)
    assert served(metrics, "cloud", "forced") == 1 and served(metrics, "cloud", "forced", 400) == 1
    assert served(metrics, "edge", "fallback") == 1
    assert sample(metrics, "routet2i_backend_errors_total", backend="cloud", kind="rate_limited") == 1

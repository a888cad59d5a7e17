"""Payload pass-through: a worker's base64 images reach the client byte-identical, after a cheap check that
refuses corrupt, truncated, mislabelled and oversized payloads (backends/passthrough.py)."""

from __future__ import annotations

import base64
import io

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from PIL import Image

from backends.base import BackendError, GenerationRequest, result_pngs
from backends.cloud import WorkerCloudBackend
from backends.passthrough import ImageCheckError, check_b64_image
from tests.servers import LiveServer


def encoded(fmt: str, size: tuple[int, int] = (64, 48)) -> str:
    """An image as base64; PNGs at compress_level 1, so that any decode + re-encode would change the bytes."""
    buf = io.BytesIO()
    options = {"compress_level": 1} if fmt == "PNG" else {}
    Image.new("RGB", size, (200, 30, 90)).save(buf, format=fmt, **options)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_good_image_passes_with_its_format(fmt):
    assert check_b64_image(encoded(fmt), 64, 48) == fmt


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (encoded("PNG")[:-40] + "A" * 40, "IEND"),  # truncated / tail overwritten
        (encoded("PNG", (64, 64)), "64x64, asked 64x48"),  # wrong size in the header
        (encoded("JPEG")[:-8] + "AAAAAAAA", "end-of-image"),
        (base64.b64encode(b"GIF89a" + bytes(200)).decode(), "neither a PNG nor a JPEG"),
        ("iVBORw0KGgo" + "!" * 33, "not base64"),
        (12345, "expected a base64 string"),
    ],
)
def test_a_corrupt_payload_is_refused(payload, why):
    with pytest.raises(ImageCheckError, match=why):
        check_b64_image(payload, 64, 48)


def test_an_oversized_payload_is_refused():
    with pytest.raises(ImageCheckError, match="larger than"):
        check_b64_image(encoded("PNG"), 64, 48, max_bytes=100)


def fake_worker(payload: str) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/generate")
    async def generate(body: dict) -> JSONResponse:
        return JSONResponse({"images": [payload] * body["n"], "seed": 7, "model": "fake"})

    return app


@pytest.mark.asyncio
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
async def test_worker_images_pass_through_byte_identical(fmt):
    payload = encoded(fmt)
    with LiveServer(fake_worker(payload)) as server:
        backend = WorkerCloudBackend(server.url, max_retries=0)
        try:
            result = await backend.generate(GenerationRequest("a cat", n=2, width=64, height=48, seed=1))
        finally:
            await backend.aclose()
    assert result.b64 == [payload, payload] and result.b64_format == fmt
    assert result.images[1].size == (64, 48) and result.images[0].format == fmt  # decoded only now, on demand
    if fmt == "PNG":
        assert result_pngs(result) == [base64.b64decode(payload)] * 2


@pytest.mark.asyncio
async def test_a_corrupt_worker_image_is_a_malformed_backend_error():
    with LiveServer(fake_worker(encoded("PNG")[:-40] + "A" * 40)) as server:
        backend = WorkerCloudBackend(server.url, max_retries=0)
        try:
            with pytest.raises(BackendError, match=r"images\[0\].*IEND") as caught:
                await backend.generate(GenerationRequest("a cat", width=64, height=48, seed=1))
        finally:
            await backend.aclose()
    assert caught.value.kind == "malformed"


@pytest.mark.asyncio
async def test_the_gateway_answers_the_workers_base64_unchanged(tmp_path):
    import httpx

    from gateway.app import create_app
    from tests.standins import HashScorer, InstantBackend, standin_settings

    payload = encoded("PNG", (64, 64))
    with LiveServer(fake_worker(payload)) as worker:
        cloud = WorkerCloudBackend(worker.url, max_retries=0)
        app = create_app(standin_settings(tmp_path), router=HashScorer(), edge=InstantBackend("edge"), cloud=cloud)
        with LiveServer(app) as gateway:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
                native = await client.post("/generate", json={"prompt": "a cat", "size": "64x64", "route": "cloud"})
                openai = await client.post("/v1/images/generations", json={"prompt": "a cat", "size": "64x64",
                                                                           "model": "cloud"})  # fmt: skip
    for response in (native, openai):
        assert response.status_code == 200, response.text
        assert response.headers["x-route-backend"] == "cloud"
        assert response.json()["data"][0]["b64_json"] == payload


@pytest.mark.parametrize("use_orjson", [True, False])
def test_fast_json_writes_the_same_document_with_or_without_orjson(monkeypatch, use_orjson):
    import json

    from gateway import fast_json

    if use_orjson and fast_json.orjson is None:
        pytest.skip("orjson not installed (pip install 'routet2i[fast]')")
    if not use_orjson:
        monkeypatch.setattr(fast_json, "orjson", None)
    doc = {"created": 1, "data": [{"b64_json": encoded("PNG")}], "route": {"prs": None, "rho": 0.3}, "note": "é"}
    assert json.loads(fast_json.dumps(doc)) == doc
    assert fast_json.FastJSONResponse(doc).headers["content-type"] == "application/json"

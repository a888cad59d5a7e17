"""Client of OpenAI's Images API (`POST {base}/v1/images/generations`, JSON in, base64 images out), and of
servers that speak it (a proxy, a self-hosted OpenAI-compatible image server).

Sizes: each OpenAI model accepts a few fixed sizes; the one closest in aspect ratio to the request is asked
for, and the image is scaled and centre-cropped to the requested WxH (as for Stability):
    dall-e-2       256x256, 512x512, 1024x1024 (square: the smallest at least as large as the longer side)
    dall-e-3       1024x1024, 1792x1024, 1024x1792
    gpt-image-*    1024x1024, 1536x1024, 1024x1536
    anything else  the requested WxH as is (an OpenAI-compatible server with its own model)
The API has no seed, negative prompt, step count or guidance: they are not sent (the seed is reported
but does not pin the image). dall-e-3 makes one image per call, so n > 1 is n concurrent calls; the other
models get `n` in one call. `response_format: b64_json` is sent except to gpt-image-* models, which
refuse the field and always answer base64.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import httpx
from PIL import Image

from backends.base import BackendError, BackendOverloaded, ContentModerated, GenerationRequest, GenerationResult
from backends.cloud.client import HTTPCloudBackend, draw_seed, json_object, open_b64_image
from backends.cloud.stability import fit_image

MODEL_SIZES: dict[str, tuple[tuple[int, int], ...]] = {
    "dall-e-2": ((256, 256), (512, 512), (1024, 1024)),
    "dall-e-3": ((1024, 1024), (1792, 1024), (1024, 1792)),
    "gpt-image": ((1024, 1024), (1536, 1024), (1024, 1536)),
}
ONE_IMAGE_PER_CALL = frozenset({"dall-e-3"})
# Error codes of a refusal on content grounds: DALL-E's and gpt-image's.
MODERATION_CODES = frozenset({"content_policy_violation", "moderation_blocked"})


def _family(model: str) -> str | None:
    if model in MODEL_SIZES:
        return model
    return "gpt-image" if model.startswith("gpt-image") else None


def openai_size(model: str, width: int, height: int) -> str:
    """The `size` to ask `model` for, for a WxH request (see the module docstring)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    family = _family(model)
    if family is None:
        return f"{width}x{height}"
    sizes = MODEL_SIZES[family]
    if family == "dall-e-2":
        side = next((w for w, _ in sizes if w >= max(width, height)), sizes[-1][0])
        return f"{side}x{side}"
    target = math.log(width / height)
    w, h = min(sizes, key=lambda s: abs(math.log(s[0] / s[1]) - target))
    return f"{w}x{h}"


def openai_error(response: httpx.Response) -> tuple[str | None, str]:
    """(error code, message) from OpenAI's `{"error": {"code", "message", ...}}` body."""
    try:
        body = response.json()
    except ValueError:
        return None, response.text[:300].strip() or response.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = error.get("code") or error.get("type")
        return (str(code) if code else None), str(error.get("message") or code or error)[:300]
    return None, str(body)[:300]


class OpenAICloudBackend(HTTPCloudBackend):
    """OpenAI Images API `POST /v1/images/generations` (DALL-E 2/3, gpt-image-*), base64 JSON responses."""

    label = "openai"
    path = "/v1/images/generations"

    def __init__(
        self,
        api_key: str,
        model: str = "gpt-image-1",
        base_url: str = "https://api.openai.com",
        timeout: float = 120.0,
        **options: Any,
    ):
        if not api_key:
            raise ValueError("api_key: an OpenAI API key is required (set ROUTET2I_OPENAI_API_KEY)")
        if not model:
            raise ValueError("model: name the OpenAI image model (dall-e-3, gpt-image-1, ...)")
        self.model = model
        headers = {"authorization": f"Bearer {api_key}", "accept": "application/json"}
        super().__init__(base_url, headers=headers, timeout=timeout, **options)

    def client_error(self, response: httpx.Response) -> BackendError:
        code, message = openai_error(response)
        if code in MODERATION_CODES:
            return ContentModerated(f"openai: HTTP {response.status_code} ({code}): {message}")
        if response.status_code == 401:
            return BackendError(f"openai: HTTP 401: {message}; check ROUTET2I_OPENAI_API_KEY", kind="http_4xx")
        return BackendError(f"openai: HTTP {response.status_code}: {message}", kind="http_4xx")

    def _error_for(self, response: httpx.Response, backoff: float) -> tuple[BackendError, float | None]:
        # A 429 for an exhausted quota (billing) will not clear by waiting: neither retried nor a health failure.
        if response.status_code == 429 and openai_error(response)[0] == "insufficient_quota":
            return BackendOverloaded(f"openai: HTTP 429: {openai_error(response)[1]}", kind="quota"), None
        return super()._error_for(response, backoff)

    def body(self, request: GenerationRequest, n: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": request.prompt,
            "n": n,
            "size": openai_size(self.model, request.width, request.height),
        }
        if _family(self.model) != "gpt-image":
            body["response_format"] = "b64_json"
        return body

    async def _call(self, request: GenerationRequest, n: int) -> list[tuple[Image.Image, bytes | None]]:
        body = self.body(request, n)

        def parse(response: httpx.Response) -> list[tuple[Image.Image, bytes | None]]:
            data = json_object(response, "openai").get("data")
            if not isinstance(data, list) or len(data) != n or not all(isinstance(item, dict) for item in data):
                raise BackendError(f"openai: expected {n} images in 'data'", kind="malformed")
            images = []
            for i, item in enumerate(data):
                image, raw = open_b64_image(item.get("b64_json"), f"openai: data[{i}].b64_json")
                if image.size == (request.width, request.height) and image.format == "PNG":
                    images.append((image, raw))  # passed on as received
                else:
                    images.append((fit_image(image, request.width, request.height), None))
            return images

        return await self.call(lambda: self.client.post(self.path, json=body), parse)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if request.n < 1:
            raise ValueError(f"n: must be a positive integer, got {request.n!r}")
        seed = request.seed if request.seed is not None else draw_seed()
        started = time.perf_counter()
        if self.model in ONE_IMAGE_PER_CALL:
            tasks = [asyncio.ensure_future(self._call(request, 1)) for _ in range(request.n)]
            try:
                batches = await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
            images = [item for batch in batches for item in batch]
        else:
            images = await self._call(request, request.n)
        pngs = [raw for _, raw in images]
        return GenerationResult(
            images=[image for image, _ in images],
            seed=seed,
            backend="cloud",
            model=self.model,
            timings={"http_s": time.perf_counter() - started},
            png=pngs if all(raw is not None for raw in pngs) else None,  # type: ignore[misc]
        )

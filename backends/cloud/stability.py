"""Client of Stability AI's hosted SD3.5 API (v2beta `generate/sd3`): multipart form in, JSON out."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import httpx
from PIL import Image, ImageOps

from backends.base import BackendError, ContentModerated, GenerationRequest, GenerationResult
from backends.cloud.client import (
    STABILITY_MAX_SEED,
    HTTPCloudBackend,
    decode_b64_image,
    draw_seed,
    json_object,
    provider_message,
)

STABILITY_MODELS = ("sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium")
ASPECT_RATIOS = ("16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21")


def nearest_aspect_ratio(width: int, height: int) -> str:
    """The allowed aspect ratio closest to width:height (compared on a log scale, so 2:1 and 1:2 are symmetric)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    target = math.log(width / height)

    def distance(ratio: str) -> float:
        w, h = (int(x) for x in ratio.split(":"))
        return abs(math.log(w / h) - target)

    return min(ASPECT_RATIOS, key=distance)


def fit_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover width x height and centre-crop the rest (the aspect ratios differ slightly)."""
    image = image.convert("RGB")
    if image.size == (width, height):
        return image
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS)


def stability_form(request: GenerationRequest, *, model: str, seed: int) -> list[tuple[str, tuple[None, str]]]:
    """The multipart fields of one v2beta SD3 call (as `httpx` `files=` parts, see the comment below)."""
    fields = {
        "prompt": request.prompt,
        "model": model,
        "mode": "text-to-image",
        "aspect_ratio": nearest_aspect_ratio(request.width, request.height),
        "output_format": "png",
        "seed": str(seed),
    }
    if request.negative_prompt:
        fields["negative_prompt"] = request.negative_prompt
    if request.guidance_scale is not None:
        fields["cfg_scale"] = str(min(10.0, max(1.0, float(request.guidance_scale))))
    # every field as a part without a filename: httpx then sends multipart/form-data, which the API requires
    return [(name, (None, value)) for name, value in fields.items()]


class StabilityCloudBackend(HTTPCloudBackend):
    """Stability AI v2beta `POST /v2beta/stable-image/generate/sd3` (SD3.5), JSON responses.

    The API picks the pixel size from `aspect_ratio`; the image is scaled and centre-cropped to the
    requested WxH. `num_inference_steps` has no counterpart and is ignored; `guidance_scale` is sent
    as `cfg_scale`, clamped to the API's [1, 10]. n > 1 is n concurrent calls with seeds seed+i.
    """

    label = "stability"
    path = "/v2beta/stable-image/generate/sd3"

    def __init__(
        self,
        api_key: str,
        model: str = "sd3.5-large",
        base_url: str = "https://api.stability.ai",
        timeout: float = 120.0,
        **options: Any,
    ):
        if not api_key:
            raise ValueError("api_key: a Stability AI API key is required (set STABILITY_API_KEY)")
        if model not in STABILITY_MODELS:
            raise ValueError(
                f"model: {model!r} is not a Stability SD3.5 model; choose one of {', '.join(STABILITY_MODELS)}"
            )
        self.model = model
        headers = {"authorization": f"Bearer {api_key}", "accept": "application/json"}
        super().__init__(base_url, headers=headers, timeout=timeout, **options)

    def client_error(self, response: httpx.Response) -> BackendError:
        if response.status_code == 403:
            return ContentModerated(f"stability: HTTP 403: {provider_message(response)}")
        return super().client_error(response)

    async def _one(self, request: GenerationRequest, seed: int) -> Image.Image:
        form = stability_form(request, model=self.model, seed=seed)

        def parse(response: httpx.Response) -> Image.Image:
            payload = json_object(response, "stability")
            reason = payload.get("finish_reason")
            if reason == "CONTENT_FILTERED":
                raise ContentModerated("stability: the image was filtered by the provider (CONTENT_FILTERED)")
            if reason != "SUCCESS":
                raise BackendError(f"stability: unexpected finish_reason {reason!r}", kind="malformed")
            image = decode_b64_image(payload.get("image"), "stability: image")
            return fit_image(image, request.width, request.height)

        return await self.call(lambda: self.client.post(self.path, files=form), parse)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if request.n < 1:
            raise ValueError(f"n: must be a positive integer, got {request.n!r}")
        seed = request.seed if request.seed is not None else draw_seed()
        started = time.perf_counter()
        tasks = [
            asyncio.ensure_future(self._one(request, (seed + i) % (STABILITY_MAX_SEED + 1))) for i in range(request.n)
        ]
        try:
            images = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return GenerationResult(
            images=list(images),
            seed=seed,
            backend="cloud",
            model=self.model,
            timings={"http_s": time.perf_counter() - started},
        )

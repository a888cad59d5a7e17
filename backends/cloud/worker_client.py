"""Client of the project's own worker (`backends.worker`): `POST {url}/v1/generate`, JSON, a bearer token."""

from __future__ import annotations

import time
from typing import Any

import httpx

from backends.base import BackendError, GenerationRequest, GenerationResult
from backends.cloud.client import HTTPCloudBackend, draw_seed, json_object
from backends.passthrough import ImageCheckError, LazyImages, check_b64_image


class WorkerCloudBackend(HTTPCloudBackend):
    """Client of `backends.worker`: `POST {url}/v1/generate` with a JSON body and a bearer token."""

    label = "worker"

    def __init__(self, url: str, token: str | None = None, timeout: float = 120.0, **options: Any):
        headers = {"accept": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        super().__init__(url, headers=headers, timeout=timeout, **options)

    def client_error(self, response: httpx.Response) -> BackendError:
        if response.status_code in (401, 403):
            return BackendError(
                f"worker: HTTP {response.status_code}: the worker rejected our token; set the gateway's worker "
                "token to the worker's ROUTET2I_WORKER_TOKEN",
                kind="http_4xx",
            )
        return super().client_error(response)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        seed = request.seed if request.seed is not None else draw_seed()
        body = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "n": request.n,
            "width": request.width,
            "height": request.height,
            "num_inference_steps": request.num_inference_steps,
            "guidance_scale": request.guidance_scale,
            "seed": seed,
        }
        body = {k: v for k, v in body.items() if v is not None}
        started = time.perf_counter()

        def parse(response: httpx.Response) -> GenerationResult:
            payload = json_object(response, "worker")
            images = payload.get("images")
            if not isinstance(images, list) or len(images) != request.n:
                raise BackendError(f"worker: expected {request.n} images in 'images'", kind="malformed")
            formats = set()
            for i, data in enumerate(images):  # signature, header size, end marker: no decode (backends.passthrough)
                try:
                    formats.add(check_b64_image(data, request.width, request.height))
                except ImageCheckError as exc:
                    raise BackendError(f"worker: images[{i}]: {exc}", kind="malformed") from exc
            timings = {"http_s": time.perf_counter() - started}
            worker_timings = payload.get("timings")
            if isinstance(worker_timings, dict):
                timings.update(
                    {f"worker_{k}": float(v) for k, v in worker_timings.items() if isinstance(v, int | float)}
                )
            return GenerationResult(
                images=LazyImages(images),
                seed=int(payload.get("seed", seed)),
                backend="cloud",
                model=str(payload.get("model", "worker")),
                timings=timings,
                b64=list(images) if len(formats) == 1 else None,
                b64_format=formats.pop() if len(formats) == 1 else None,
            )

        return await self.call(lambda: self.client.post("/v1/generate", json=body), parse)

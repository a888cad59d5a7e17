"""What every image backend takes and returns, and the errors it may raise.

Backends know nothing of routing: the gateway picks one and awaits `generate`.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from PIL import Image

MAX_SEED = 2**32 - 1  # seeds are uint32 everywhere a request carries one (edge, worker, HTTP API)


@dataclass
class GenerationRequest:
    prompt: str
    negative_prompt: str | None = None
    n: int = 1
    width: int = 512
    height: int = 512
    num_inference_steps: int | None = None  # None: the backend's default
    guidance_scale: float | None = None
    seed: int | None = None  # None: the backend draws one and reports it


@dataclass
class GenerationResult:
    images: Sequence[Image.Image]  # a list, or `passthrough.LazyImages` decoding on first access
    seed: int
    backend: str  # "edge" or "cloud"
    model: str
    timings: dict[str, float] = field(default_factory=dict)
    # The images as PNG bytes exactly as the backend received them (a worker's response), or None: the
    # gateway passes these on instead of re-encoding (a 512×512 PNG encode costs ~100 ms of CPU).
    png: list[bytes] | None = None
    # The images base64-encoded exactly as the backend sent them (PNG or JPEG, cheaply checked by
    # `backends.passthrough`), or None: the gateway answers b64_json with these strings as they are.
    b64: list[str] | None = None
    b64_format: str | None = None  # "PNG" or "JPEG": the format of every `b64` image


def result_pngs(result: GenerationResult) -> list[bytes]:
    """Every image of `result` as PNG bytes: the received bytes when the backend kept them, else encoded now."""
    if result.png is not None and len(result.png) == len(result.images):
        return list(result.png)
    if result.b64 is not None and result.b64_format == "PNG":
        return [base64.b64decode(data) for data in result.b64]
    return [png_bytes(image) for image in result.images]


@runtime_checkable
class ImageBackend(Protocol):
    name: str

    async def generate(self, request: GenerationRequest) -> GenerationResult: ...

    def ready(self) -> bool: ...

    async def aclose(self) -> None: ...


class BackendError(Exception):
    """A generation that failed. `kind` labels metrics: timeout, unavailable, http_5xx, moderated, ..."""

    kind = "error"

    def __init__(self, message: str, *, kind: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind
        self.retry_after = retry_after


class BackendOverloaded(BackendError):
    """The backend's queue is full or it rate-limits us; try again after `retry_after` seconds."""

    kind = "overloaded"


class BackendUnavailable(BackendError):
    """The backend cannot be reached (down, circuit open, timed out)."""

    kind = "unavailable"


class RequestRejected(BackendError, ValueError):
    """The backend cannot run this request as asked (it is outside what its model supports): the same
    request would fail again, so it is a client error (422), never retried and no sign of ill health.
    A `ValueError` too, so callers that answer 422 for invalid requests do so for these."""

    kind = "rejected"


class ContentModerated(BackendError):
    """The provider refused the prompt or the image on content grounds."""

    kind = "moderated"


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def image_from_bytes(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def compute_units(width: int, height: int, steps: int, n: int = 1) -> int:
    """The work a request asks for, pixels × denoising steps × images: what one generation costs, to the
    first order, on any diffusion backend (512×512, 25 steps, one image: 6,553,600)."""
    return width * height * steps * n

"""Cloud image backends over `httpx`: the project's own worker and Stability AI's hosted SD3.5 API.

Both share one request path: per-attempt timeouts; bounded retries with exponential backoff and
jitter on connect errors, timeouts, 5xx and 429 (waiting what `Retry-After` asks, up to a cap); and a
circuit breaker that fails fast with `BackendUnavailable` after `failure_threshold` consecutive failed
requests, then lets one trial request through after `cooldown_s`. Errors carry `kind` for metrics:
timeout, unavailable, http_5xx, http_4xx, rate_limited, moderated, malformed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import io
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from PIL import Image, ImageOps

from backends.base import (
    BackendError,
    BackendOverloaded,
    BackendUnavailable,
    ContentModerated,
    GenerationRequest,
    GenerationResult,
    image_from_bytes,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Outcomes that say the backend itself is unhealthy (they count towards opening the circuit).
BREAKER_FAILURE_KINDS = frozenset({"timeout", "unavailable", "http_5xx", "malformed"})
MAX_SEED = 2**32 - 2  # Stability accepts seeds in [0, 4294967294]; 0 means "random" there


def _draw_seed() -> int:
    return random.SystemRandom().randint(1, MAX_SEED)


@dataclass
class RetryPolicy:
    """`max_retries` retries after the first attempt; delays `backoff_base * 2**attempt` (capped), jittered."""

    max_retries: int = 2
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    retry_after_cap: float = 10.0  # a longer Retry-After is not waited for: the caller gets it back

    def backoff(self, attempt: int) -> float:
        delay = min(self.backoff_max, self.backoff_base * 2**attempt)
        return delay / 2 + random.uniform(0, delay / 2)


class CircuitBreaker:
    """Closed → open after `failure_threshold` consecutive failures → half-open after `cooldown_s`.

    Half-open lets exactly one trial request through; its success closes the circuit, its failure
    opens it again for another cooldown.
    """

    def __init__(
        self, failure_threshold: int = 5, cooldown_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ):
        if failure_threshold < 1 or cooldown_s < 0:
            raise ValueError("failure_threshold must be >= 1 and cooldown_s >= 0")
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._clock() - self._opened_at >= self.cooldown_s else "open"

    def acquire(self, label: str = "backend") -> bool:
        """Admit a request or raise `BackendUnavailable`; True when the request is the half-open trial."""
        state = self.state
        if state == "closed":
            return False
        if state == "half_open" and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        remaining = max(0.0, self._opened_at + self.cooldown_s - self._clock())
        raise BackendUnavailable(
            f"{label}: circuit open after {self._failures} consecutive failures; next try in {remaining:.1f}s",
            kind="unavailable",
            retry_after=max(remaining, 0.1),
        )

    def record(self, healthy: bool) -> None:
        self._trial_in_flight = False
        if healthy:
            self._failures = 0
            self._opened_at = None
            return
        self._failures += 1
        if self._opened_at is not None or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()  # (re)open: a failed trial starts a new cooldown

    def release(self) -> None:
        """Forget an admitted request that ended without an outcome (the caller was cancelled)."""
        self._trial_in_flight = False


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header: delta-seconds (fractions tolerated) or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def provider_message(response: httpx.Response) -> str:
    """The error text a provider put in its body (Stability `errors`, FastAPI `detail`, `message`), short."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300].strip() or response.reason_phrase
    if isinstance(body, dict):
        for key in ("errors", "detail", "message", "error", "name"):
            value = body.get(key)
            if value:
                if isinstance(value, list):
                    value = "; ".join(
                        f"{'.'.join(map(str, v.get('loc', [])))}: {v.get('msg')}" if isinstance(v, dict) else str(v)
                        for v in value
                    )
                return str(value)[:300]
    return str(body)[:300]


def decode_b64_image(data: Any, what: str) -> Image.Image:
    if not isinstance(data, str):
        raise BackendError(f"{what}: expected a base64 string, got {type(data).__name__}", kind="malformed")
    try:
        return image_from_bytes(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError, OSError) as exc:
        raise BackendError(f"{what}: not a base64-encoded image ({exc})", kind="malformed") from exc


def open_b64_image(data: Any, what: str) -> tuple[Image.Image, bytes]:
    """(image, its bytes): the image is checked whole (chunk checksums, `Image.verify`) but decoded lazily,
    on first pixel access, so a PNG can be passed on as received without a decode/encode round trip."""
    if not isinstance(data, str):
        raise BackendError(f"{what}: expected a base64 string, got {type(data).__name__}", kind="malformed")
    try:
        raw = base64.b64decode(data, validate=True)
        with Image.open(io.BytesIO(raw)) as probe:
            probe.verify()
        return Image.open(io.BytesIO(raw)), raw
    except (binascii.Error, ValueError, OSError, SyntaxError) as exc:  # PIL raises SyntaxError for broken chunks
        raise BackendError(f"{what}: not a base64-encoded image ({exc})", kind="malformed") from exc


def _json_object(response: httpx.Response, what: str) -> dict:
    try:
        body = response.json()
    except ValueError as exc:
        raise BackendError(f"{what}: response is not JSON ({exc})", kind="malformed") from exc
    if not isinstance(body, dict):
        raise BackendError(f"{what}: expected a JSON object, got {type(body).__name__}", kind="malformed")
    return body


class HTTPCloudBackend:
    """Shared request path (retries, breaker, error mapping); subclasses build requests and parse bodies."""

    name = "cloud"
    label = "cloud"

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 5.0,
        max_retries: int = 2,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        retry_after_cap: float = 10.0,
        failure_threshold: int = 5,
        cooldown_s: float = 30.0,
        client: httpx.AsyncClient | None = None,
    ):
        self.retry = RetryPolicy(max_retries, backoff_base, backoff_max, retry_after_cap)
        self.breaker = CircuitBreaker(failure_threshold, cooldown_s)
        self._owns_client = client is None
        self.client = client or httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers or {},
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
        )
        self._closed = False

    @property
    def circuit_state(self) -> str:
        return self.breaker.state

    def ready(self) -> bool:
        return not self._closed

    async def aclose(self) -> None:
        self._closed = True
        if self._owns_client:
            await self.client.aclose()

    def client_error(self, response: httpx.Response) -> BackendError:
        """A 4xx other than 429; providers override to map moderation refusals."""
        return BackendError(f"{self.label}: HTTP {response.status_code}: {provider_message(response)}", kind="http_4xx")

    async def call(self, send: Callable[[], Awaitable[httpx.Response]], parse: Callable[[httpx.Response], T]) -> T:
        """Run `send` with retries under the circuit breaker and `parse` the first 2xx response."""
        if self._closed:
            raise BackendUnavailable(f"{self.label}: backend is closed")
        self.breaker.acquire(self.label)
        try:
            result = await self._attempts(send, parse)
        except BackendError as exc:
            self.breaker.record(healthy=exc.kind not in BREAKER_FAILURE_KINDS)
            log.warning("%s: request failed (%s)", self.label, exc.kind)
            raise
        except BaseException:
            self.breaker.release()
            raise
        self.breaker.record(healthy=True)
        return result

    async def _attempts(self, send: Callable[[], Awaitable[httpx.Response]], parse: Callable[[httpx.Response], T]) -> T:
        attempts = self.retry.max_retries + 1
        for attempt in range(attempts):
            delay: float | None = self.retry.backoff(attempt)
            try:
                response = await send()
            except httpx.TimeoutException as exc:
                error: BackendError = BackendUnavailable(
                    f"{self.label}: timed out ({type(exc).__name__})", kind="timeout"
                )
            except httpx.TransportError as exc:
                error = BackendUnavailable(f"{self.label}: cannot reach the server ({type(exc).__name__})")
            else:
                if response.is_success:
                    try:
                        return parse(response)
                    except BackendError:
                        raise
                    except Exception as exc:  # a body that parses but holds the wrong types
                        raise BackendError(f"{self.label}: unexpected response ({exc})", kind="malformed") from exc
                error, delay = self._error_for(response, delay)
            if delay is None or attempt == attempts - 1:
                raise error
            log.info(
                "%s: attempt %d/%d failed (%s); retrying in %.2fs", self.label, attempt + 1, attempts, error.kind, delay
            )
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _error_for(self, response: httpx.Response, backoff: float) -> tuple[BackendError, float | None]:
        """The error for a non-2xx response and how long to wait before retrying (None: don't retry)."""
        status = response.status_code
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if status == 429 or (status == 503 and retry_after is not None):
            error = BackendOverloaded(
                f"{self.label}: rate limited (HTTP {status}): {provider_message(response)}",
                kind="rate_limited",
                retry_after=retry_after,
            )
            if retry_after is None:
                return error, backoff
            return error, retry_after if retry_after <= self.retry.retry_after_cap else None
        if status >= 500:
            return BackendError(f"{self.label}: HTTP {status}: {provider_message(response)}", kind="http_5xx"), backoff
        return self.client_error(response), None


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
        seed = request.seed if request.seed is not None else _draw_seed()
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
            payload = _json_object(response, "worker")
            images = payload.get("images")
            if not isinstance(images, list) or len(images) != request.n:
                raise BackendError(f"worker: expected {request.n} images in 'images'", kind="malformed")
            opened = [open_b64_image(data, f"worker: images[{i}]") for i, data in enumerate(images)]
            decoded = [image for image, _ in opened]
            for image in decoded:
                if image.size != (request.width, request.height):
                    raise BackendError(
                        f"worker: image is {image.size[0]}x{image.size[1]}, asked {request.width}x{request.height}",
                        kind="malformed",
                    )
            timings = {"http_s": time.perf_counter() - started}
            worker_timings = payload.get("timings")
            if isinstance(worker_timings, dict):
                timings.update(
                    {f"worker_{k}": float(v) for k, v in worker_timings.items() if isinstance(v, int | float)}
                )
            return GenerationResult(
                images=decoded,
                seed=int(payload.get("seed", seed)),
                backend="cloud",
                model=str(payload.get("model", "worker")),
                timings=timings,
                png=[raw for _, raw in opened] if all(image.format == "PNG" for image in decoded) else None,
            )

        return await self.call(lambda: self.client.post("/v1/generate", json=body), parse)


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
            payload = _json_object(response, "stability")
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
        seed = request.seed if request.seed is not None else _draw_seed()
        started = time.perf_counter()
        tasks = [asyncio.ensure_future(self._one(request, (seed + i) % (MAX_SEED + 1))) for i in range(request.n)]
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

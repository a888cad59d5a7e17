"""The request path every cloud client shares: per-attempt timeouts, bounded retries, the circuit breaker,
and the mapping of HTTP outcomes to `BackendError` kinds (timeout, unavailable, http_5xx, http_4xx,
rate_limited, moderated, malformed); plus helpers to read providers' JSON bodies and images.

Retried: connection errors, timeouts, 5xx, and 429 (waiting what `Retry-After` asks, up to a cap).
Never retried: other 4xx, including the worker's 422 for a request it cannot run, and malformed answers.
A cancelled call (the caller gave up) closes its connection, which the worker takes as the signal to
stop generating.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
from PIL import Image

from backends.base import BackendError, BackendOverloaded, BackendUnavailable, image_from_bytes
from backends.cloud.policy import BreakerStatus, CircuitBreaker, RetryPolicy, is_health_failure, parse_retry_after

try:
    import orjson  # the optional extra `routet2i[fast]`
except ImportError:
    orjson = None

log = logging.getLogger("backends.cloud")

T = TypeVar("T")

STABILITY_MAX_SEED = 2**32 - 2  # Stability accepts seeds in [0, 4294967294]; 0 means "random" there


def draw_seed() -> int:
    return random.SystemRandom().randint(1, STABILITY_MAX_SEED)


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


def json_object(response: httpx.Response, what: str) -> dict:
    """The provider's JSON object (orjson when installed: half of json's time on a 550 kB image body)."""
    try:
        body = orjson.loads(response.content) if orjson is not None else response.json()
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
        """The circuit: closed, open or half_open."""
        return self.breaker.state

    def breaker_status(self) -> BreakerStatus:
        """The circuit's state, seconds until it lets a trial through, and the failures that opened it."""
        return self.breaker.status()

    def ready(self) -> bool:
        """False once closed, and while the circuit is open (the backend failed repeatedly: calls fail fast)."""
        return not self._closed and self.breaker.state != "open"

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
            self.breaker.record(healthy=not is_health_failure(exc.kind))
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
        return self.client_error(response), None  # deterministic: the same request would fail the same way

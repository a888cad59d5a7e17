"""Cloud image backends over `httpx`: the project's own worker, Stability AI's hosted SD3.5 API and OpenAI's
Images API.

    policy.py         retry/backoff, the circuit breaker, which failures say the backend is unhealthy
    client.py         the shared request path (retries under the breaker, error kinds) and body helpers
    worker_client.py  `WorkerCloudBackend`, client of `backends.worker`
    stability.py      `StabilityCloudBackend`, Stability AI v2beta SD3.5
    openai.py         `OpenAICloudBackend`, OpenAI Images API (DALL-E, gpt-image) and servers speaking it

All clients share one request path: per-attempt timeouts; bounded retries with exponential backoff and
jitter on connect errors, timeouts, 5xx and 429; no retry of a request the backend refused (4xx); and a
circuit breaker that fails fast with `BackendUnavailable` after `failure_threshold` consecutive failures
that say the backend is unhealthy, then lets one trial request through after `cooldown_s`.
`breaker_status()` reports the circuit for readiness checks and metrics.
"""

from backends.cloud.client import (
    STABILITY_MAX_SEED,
    HTTPCloudBackend,
    decode_b64_image,
    draw_seed,
    json_object,
    open_b64_image,
    provider_message,
)
from backends.cloud.openai import MODEL_SIZES, OpenAICloudBackend, openai_size
from backends.cloud.policy import (
    BREAKER_FAILURE_KINDS,
    BreakerStatus,
    CircuitBreaker,
    RetryPolicy,
    is_health_failure,
    parse_retry_after,
)
from backends.cloud.stability import (
    ASPECT_RATIOS,
    STABILITY_MODELS,
    StabilityCloudBackend,
    fit_image,
    nearest_aspect_ratio,
    stability_form,
)
from backends.cloud.worker_client import WorkerCloudBackend

__all__ = [
    "ASPECT_RATIOS",
    "BREAKER_FAILURE_KINDS",
    "STABILITY_MAX_SEED",
    "STABILITY_MODELS",
    "BreakerStatus",
    "CircuitBreaker",
    "HTTPCloudBackend",
    "MODEL_SIZES",
    "OpenAICloudBackend",
    "RetryPolicy",
    "StabilityCloudBackend",
    "WorkerCloudBackend",
    "decode_b64_image",
    "draw_seed",
    "fit_image",
    "is_health_failure",
    "json_object",
    "nearest_aspect_ratio",
    "openai_size",
    "open_b64_image",
    "parse_retry_after",
    "provider_message",
    "stability_form",
]

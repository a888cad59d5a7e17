"""When a cloud call is retried and when the backend counts as unhealthy: retry/backoff and the circuit breaker.

The split that matters: a failure the request itself caused (4xx, a refusal, a rate limit) says nothing
about the backend, so it is neither retried (except 429, which asks for it) nor counted by the breaker;
only what says the backend is unwell (timeouts, connection errors, 5xx, garbled answers) opens the circuit.
Otherwise any caller could open it for everyone with requests the backend rejects.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from backends.base import BackendUnavailable

# Outcomes that say the backend itself is unhealthy (they count towards opening the circuit).
BREAKER_FAILURE_KINDS = frozenset({"timeout", "unavailable", "http_5xx", "malformed"})


def is_health_failure(kind: str) -> bool:
    """True when an error of this `kind` says the backend is unwell (not that the request was refused)."""
    return kind in BREAKER_FAILURE_KINDS


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


@dataclass(frozen=True)
class BreakerStatus:
    """What readiness and metrics show of a circuit: its state, when it lets a trial through, why."""

    state: str  # "closed", "open" or "half_open"
    retry_in_s: float  # seconds until a trial request is let through (0 unless open)
    consecutive_failures: int

    @property
    def healthy(self) -> bool:
        """False while the circuit is open (requests fail fast); half-open lets a trial through."""
        return self.state != "open"

    def as_dict(self) -> dict:
        return {
            "state": self.state,
            "retry_in_s": round(self.retry_in_s, 3),
            "consecutive_failures": self.consecutive_failures,
        }


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

    def retry_in(self) -> float:
        """Seconds until the circuit lets a trial request through (0 when it is not open)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.cooldown_s - self._clock())

    def status(self) -> BreakerStatus:
        return BreakerStatus(self.state, self.retry_in(), self._failures)

    def acquire(self, label: str = "backend") -> bool:
        """Admit a request or raise `BackendUnavailable`; True when the request is the half-open trial."""
        state = self.state
        if state == "closed":
            return False
        if state == "half_open" and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        remaining = self.retry_in()
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

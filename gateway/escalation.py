"""Verify then escalate: check the image a cheaper arm served, and re-run the request on the next arm up when
the check scores it under a threshold.

Today the arms are the edge and the cloud: an edge image the gateway chose to serve there (reason "model" or
"budget") is scored by an `ImageCheck` (CLIP image–text similarity, backends/image_check.py) off the event
loop; under `verify_threshold` the request goes to the `fallback` backend it is given (the cloud; none for a
private prompt, so it never leaves the edge). The escalation is a cloud call like any other: the client key's
cloud share and the budget's hard caps (`BudgetController.escalate`) must allow it, and it is counted as its
own call, so the budget counts both the edge call and the cloud call. Refused, or failed, the edge image is
served and the response says so (`Verdict`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from backends.base import BackendError, ContentModerated, GenerationRequest, GenerationResult, ImageBackend
from backends.image_check import ClipImageCheck, ImageCheck, score_images
from gateway.budget import BudgetController, Decision
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings

log = logging.getLogger("routet2i.gateway")
VerifyResult = Literal["pass", "escalated", "capped", "failed"]
VERIFIED_REASONS = ("model", "budget")  # edge routes the gateway chose; forced, private, fallback, cache: not checked


@dataclass(frozen=True)
class Verdict:
    """What verify-then-escalate did: pass (kept), escalated (served by the next arm), capped (a cap or the key's
    share refused the escalation: the edge image kept), failed (the check or the escalation failed: kept)."""

    result: VerifyResult
    score: float | None  # the lowest score of the request's images; None when the check failed
    from_arm: str | None = None  # escalated: the arm whose image failed the check
    first_cost: float | None = None  # escalated (N arms): what that first call cost

    @property
    def escalated(self) -> bool:
        return self.result == "escalated"


class Escalation:
    """The check, its threshold and the budget path of an escalation; `default`: whether requests that do not
    say (`"verify"` unset) are verified."""

    def __init__(
        self, check: ImageCheck, *, threshold: float, budget: BudgetController, metrics: GatewayMetrics,
        default: bool = False,
    ):  # fmt: skip
        self.check, self.threshold, self.budget, self.metrics, self.default = check, threshold, budget, metrics, default

    async def load(self) -> None:
        """Load the check's weights in a worker thread (if it loads lazily)."""
        load = getattr(self.check, "load", None)
        if load is not None:
            await asyncio.to_thread(load)

    def wanted(self, verify: bool | None, route: Decision, fallback: ImageBackend | None) -> bool:
        """Whether this served request is checked: asked for (or the default), served by the edge on the gateway's
        own choice, and with an arm to escalate to."""
        asked = self.default if verify is None else verify
        return asked and route.backend == "edge" and route.reason in VERIFIED_REASONS and fallback is not None

    async def run(
        self, request: GenerationRequest, result: GenerationResult, route: Decision, *, fallback: ImageBackend,
        gate: Callable[[bool], bool] | None = None,
    ) -> tuple[GenerationResult, Decision, Verdict]:  # fmt: skip
        """Score `result`; under the threshold, re-run `request` on `fallback` if the key's `gate` and the budget
        allow a cloud call. Returns what to serve, its route and the verdict."""
        score = await self.score(request, result)
        if score is None:
            return self._done(result, route, Verdict("failed", None))
        if score >= self.threshold:
            return self._done(result, route, Verdict("pass", score))
        if gate is not None and not gate(True):
            return self._done(result, route, Verdict("capped", score))
        decision = self.budget.escalate()
        if not decision.cloud:
            return self._done(result, route, Verdict("capped", score))
        try:
            better = await fallback.generate(request)
        except ContentModerated as exc:  # the call was made (counted); the edge image stands
            self.metrics.backend_error(exc.kind, "cloud")
            return self._done(result, route, Verdict("failed", score))
        except BackendError as exc:  # no cloud image: give the call back to the budget, serve the edge image
            self.metrics.backend_error(exc.kind, "cloud")
            log.warning("verify: escalation failed (%s): %s; serving the edge image", exc.kind, exc)
            if decision.ticket is not None:
                self.budget.record("edge", "fallback", ticket=decision.ticket)
            return self._done(result, route, Verdict("failed", score))
        escalated = replace(route, backend="cloud", reason="escalated", rho=decision.rho)
        self.metrics.observe_escalation("edge", "cloud")
        return self._done(better, escalated, Verdict("escalated", score, from_arm="edge"))

    async def score(self, request: GenerationRequest, result: GenerationResult) -> float | None:
        """The lowest check score of `result`'s images (off the event loop); None when the check failed."""
        try:
            scores = await asyncio.to_thread(score_images, self.check, request.prompt, list(result.images))
            return min(scores)
        except Exception as exc:  # a broken check must not fail a request that has its image
            log.warning("verify: the image check failed (%s); serving the image as it is", type(exc).__name__)
            return None

    def done(
        self, result: GenerationResult, route: Decision, verdict: Verdict
    ) -> tuple[GenerationResult, Decision, Verdict]:
        """Count and log the verdict; returns what to serve."""
        return self._done(result, route, verdict)

    def _done(
        self, result: GenerationResult, route: Decision, verdict: Verdict
    ) -> tuple[GenerationResult, Decision, Verdict]:
        self.metrics.observe_verify(verdict.result, verdict.score)
        score = "-" if verdict.score is None else f"{verdict.score:.4f}"
        log.info("verify result=%s score=%s threshold=%.4f", verdict.result, score, self.threshold)
        return result, route, verdict


def build_escalation(settings: Settings, budget: BudgetController, metrics: GatewayMetrics) -> Escalation | None:
    """The CLIP check `verify_clip_model` names (loaded when the app starts), or None without one."""
    if not settings.verify_clip_model:
        if settings.verify_enabled:
            raise ValueError("verify_enabled needs an image check: set ROUTET2I_VERIFY_CLIP_MODEL to a CLIP "
                             "checkpoint (path or hub id), or ROUTET2I_VERIFY_ENABLED=false")  # fmt: skip
        return None
    check = ClipImageCheck(settings.verify_clip_model, device=settings.verify_device, lazy=True)
    return Escalation(
        check, threshold=settings.verify_threshold, budget=budget, metrics=metrics, default=settings.verify_enabled
    )

"""One request through the gateway: score, decide, look in the exact cache, generate, fall back, count.

`Gateway` composes the router (via the scoring service), the budget controller, the two backends
and the metrics; the HTTP routes (gateway/api/routes/) only turn HTTP into calls of `generate`, `score`
and `preview`. It knows nothing of HTTP: it takes a `ServeRequest` and raises `GatewayError`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

from backends.base import (
    BackendError,
    BackendOverloaded,
    ContentModerated,
    GenerationRequest,
    GenerationResult,
    ImageBackend,
    compute_units,
    result_pngs,
)
from gateway.budget import BudgetController, Decision
from gateway.cache import CachedImages, ImageCache
from gateway.escalation import Escalation, Verdict
from gateway.metrics import GatewayMetrics
from gateway.routing import PromptScore, ScoringService

log = logging.getLogger("routet2i.gateway")
CLIENT_CLOSED = 499  # the status a request is counted with when its client went away before the response


class GatewayError(Exception):
    """A request that cannot be served; `status` and `retry_after` become the HTTP response."""

    def __init__(self, status: int, detail: str, *, retry_after: float | None = None, kind: str = "error"):
        super().__init__(detail)
        self.status, self.detail, self.retry_after, self.kind = status, detail, retry_after, kind
        self.route: Decision | None = None  # what failed, if not the decided route (the edge after a fallback)


@dataclass(frozen=True)
class ServeRequest:
    """One request to the gateway: what to generate, and who decides where (`route`) or forbids the cloud."""

    generation: GenerationRequest
    route: Literal["auto", "edge", "cloud"] = "auto"  # auto: the router and the budget decide
    private: bool = False  # True: the prompt never leaves the edge
    # A client key's cloud share (gateway.keys): told whether this request would go to the cloud, says whether
    # the key may, counting the decision in the key's window. None: no per-key share.
    cloud_gate: Callable[[bool], bool] | None = None
    cache: bool = True  # False: neither served from nor stored in the exact cache
    verify: bool | None = None  # verify then escalate (gateway/escalation.py); None: the gateway's default


@dataclass
class Served:
    result: GenerationResult
    route: Decision
    verify: Verdict | None = None  # what verify-then-escalate did; None: not checked


class Gateway:
    def __init__(
        self,
        *,
        scoring: ScoringService,
        budget: BudgetController,
        metrics: GatewayMetrics,
        edge: ImageBackend,
        cloud: ImageBackend | None,
        log_prompts: bool = False,
        max_compute_units: int | None = None,
        default_steps: int = 25,
        forced_cloud_may_exceed_rho: bool = False,
        cache: ImageCache | None = None,
        arms: Mapping[str, str] | None = None,
        escalation: Escalation | None = None,
        costs: Mapping[str, float] | None = None,
    ):
        """`max_compute_units`: the most work one request may ask for (`backends.base.compute_units`, with
        `default_steps` for a request that leaves the steps to the backend); None: no limit.
        `cache`: the exact cache of seeded requests (None: off); `arms`: the model id of each arm (backend) in its
        cache keys (a changed model never serves the old one's images); `costs`: each arm's cost per image."""
        self.scoring, self.budget, self.metrics = scoring, budget, metrics
        self.edge, self.cloud = edge, cloud
        self.log_prompts = log_prompts
        self.max_compute_units, self.default_steps = max_compute_units, default_steps
        self.forced_cloud_may_exceed_rho = forced_cloud_may_exceed_rho
        self.cache = cache
        self.arms = {"edge": "edge", "cloud": "cloud", **(arms or {})}
        self.escalation = escalation
        self.costs = {"edge": 0.0, "cloud": 1.0, **(costs or {})}
        self._in_flight = 0  # requests inside generate(): a lone one is scored inline (gateway/routing.py)

    async def score(self, prompt: str) -> PromptScore:
        score = await self.scoring.score(prompt, alone=self._in_flight <= 1)
        self.metrics.observe_router(score.prs, score.latency_s)
        return score

    async def preview(self, prompt: str, private: bool = False) -> tuple[PromptScore, Decision]:
        """Score a prompt and say where it would go now (caps included), counting nothing (POST /route)."""
        score = await self.score(prompt)
        return score, self.budget.preview(score.prs, private=private)

    async def generate(self, job: ServeRequest) -> Served:
        """Serve one request; cancelling the calling task (its client went away) cancels the generation too,
        and the request is counted with status 499."""
        self._in_flight += 1
        try:
            return await self._generate(job)
        finally:
            self._in_flight -= 1

    async def _generate(self, job: ServeRequest) -> Served:
        started = time.perf_counter()
        request = job.generation
        route: Decision | None = None
        try:
            self._check_compute(request)
            if job.verify and self.escalation is None:
                raise GatewayError(422, "verify: this gateway has no image check (verify_clip_model)", kind="invalid")
            route, ticket = await self._decide(job)
            cached = self._cacheable(job)
            served = await self._from_cache(job, route, ticket) if cached else None
            if served is None:
                served = await self._verify(job, await self._serve(request, route, ticket))
                if cached:
                    await self._to_cache(job, served)
        except (GatewayError, asyncio.CancelledError) as exc:
            status = exc.status if isinstance(exc, GatewayError) else CLIENT_CLOSED
            failed = (exc.route if isinstance(exc, GatewayError) else None) or route
            self.metrics.observe_request(
                backend=failed.backend if failed else None, reason=failed.reason if failed else None, status=status,
                duration_s=time.perf_counter() - started,
            )  # fmt: skip
            raise
        duration = time.perf_counter() - started
        self.metrics.observe_request(
            backend=served.route.backend, reason=served.route.reason, status=200, duration_s=duration
        )
        served.route = self._priced(served.route, request.n)
        self._observe_arm(served)
        log.info(
            "served arm=%s backend=%s reason=%s prs=%s alpha=%s n=%d size=%dx%d seconds=%.3f%s",
            served.route.arm or served.route.backend, served.route.backend, served.route.reason,
            _fmt(served.route.prs), _fmt(served.route.alpha), request.n,
            request.width, request.height, duration, f" prompt={request.prompt!r}" if self.log_prompts else "",
        )  # fmt: skip
        return served

    def _priced(self, route: Decision, n: int) -> Decision:
        """The route with its arm named and its cost (two arms: edge_cost/cloud_cost per image; a cache hit: 0)."""
        arm = route.arm or route.backend
        if route.cost is not None:
            return replace(route, arm=arm)
        cost = 0.0 if route.reason == "cache" else self.costs.get(arm, 0.0) * n
        return replace(route, arm=arm, cost=cost)

    def _observe_arm(self, served: Served) -> None:
        """The served request in the arm metrics; an N-arm escalation's first call is spent on its own arm."""
        route, verdict = served.route, served.verify
        cost = route.cost or 0.0
        if verdict is not None and verdict.escalated and verdict.from_arm and verdict.first_cost is not None:
            self.metrics.arm_cost.labels(arm=verdict.from_arm).inc(verdict.first_cost)
            cost -= verdict.first_cost
        self.metrics.observe_arm(route.arm or route.backend, route.reason, cost)

    def _check_compute(self, request: GenerationRequest) -> None:
        """422 for a request asking for more work than `max_compute_units`, naming the fields to lower."""
        if self.max_compute_units is None:
            return
        steps = request.num_inference_steps or self.default_steps
        units = compute_units(request.width, request.height, steps, request.n)
        if units > self.max_compute_units:
            raise GatewayError(
                422,
                f"size × num_inference_steps × n = {request.width}×{request.height} × {steps} × {request.n} = "
                f"{units:,} compute units, more than max_compute_units = {self.max_compute_units:,}: lower size, "
                "num_inference_steps or n",
                kind="too_much_compute",
            )

    async def _decide(self, job: ServeRequest) -> tuple[Decision, int | None]:
        """(route, ticket): the ticket of a counted decision (model or forced), None when counted later by `_count`.
        A forced cloud request obeys the budget's hard caps (refused: the edge, reason "budget"); so does a
        client key's own cloud share (its `cloud_gate`), on every route."""
        gate = job.cloud_gate
        if job.private:
            if gate is not None:
                gate(False)
            return Decision("edge", "private", rho=self.budget.rho), None
        if job.route != "auto":
            decision = self.budget.force(job.route, may_exceed_rho=self.forced_cloud_may_exceed_rho)
            return self._key_share(decision, gate), decision.ticket
        score = await self.score(job.generation.prompt)
        decision = self.budget.decide(score.prs)
        return self._key_share(decision, gate), decision.ticket

    def _cacheable(self, job: ServeRequest) -> bool:
        """Whether the cache takes part: only seeded requests (no seed: a new image is wanted) that did not opt out."""
        if self.cache is None:
            return False
        if job.cache and job.generation.seed is not None:
            return True
        self.cache.bypass()
        return False

    def _cache_key(self, job: ServeRequest, route: Decision) -> str:
        assert self.cache is not None
        steps = self.default_steps if route.backend == "edge" else None  # the edge's default is known, a cloud's not
        arm = self.arms[route.arm or route.backend]
        return self.cache.key(job.generation, arm, private=job.private, default_steps=steps)

    async def _from_cache(self, job: ServeRequest, route: Decision, ticket: int | None) -> Served | None:
        """The cached images of this request on the arm it was routed to, counted as a zero-cost request
        (reason "cache": no cloud call against the budget), or None."""
        assert self.cache is not None
        entry = await self.cache.get(self._cache_key(job, route), private=job.private)
        if entry is None:
            return None
        return Served(entry.result(), self._cached(route, ticket))

    def _cached(self, route: Decision, ticket: int | None) -> Decision:
        """Count a cache hit as a zero-cost request (reason "cache")."""
        if ticket is not None:
            self.budget.record("edge", "cache", ticket=ticket)
        else:
            route = replace(route, rho=self.budget.count("edge", "cache", prs=route.prs).rho)
        return replace(route, reason="cache")

    async def _to_cache(self, job: ServeRequest, served: Served) -> None:
        """Keep what was served under the arm that served it; its PNGs are encoded once, here, for the response too."""
        assert self.cache is not None
        result = served.result
        if result.png is None or len(result.png) != len(result.images):
            result.png = await asyncio.to_thread(result_pngs, result)
        key = self._cache_key(job, served.route)
        await self.cache.put(key, CachedImages.of(result, result.png), private=job.private)

    def _key_share(self, decision: Decision, gate: Callable[[bool], bool] | None) -> Decision:
        """Count the decision in the client key's share window; over the key's share, the edge serves it
        (reason "budget"), as if a cap of the budget had refused it."""
        if gate is None or gate(decision.cloud) or not decision.cloud:
            return decision
        self.budget.record("edge", "budget", ticket=decision.ticket)
        return replace(decision, backend="edge", reason="budget")

    async def _serve(self, request: GenerationRequest, route: Decision, ticket: int | None) -> Served:
        if route.backend == "cloud":
            if self.cloud is None:
                self.metrics.backend_error("not_configured", "cloud")
                route = self._fall_back(route, ticket)
            else:
                try:
                    result = await self.cloud.generate(request)
                    return Served(result, self._count(route, ticket))
                except ContentModerated as exc:
                    self.metrics.backend_error(exc.kind, "cloud")
                    route = self._count(route, ticket)
                    raise GatewayError(400, f"the cloud provider refused this prompt: {exc}", kind=exc.kind) from exc
                except BackendError as exc:
                    self.metrics.backend_error(exc.kind, "cloud")
                    log.warning("cloud failed (%s): %s; falling back to the edge", exc.kind, exc)
                    route = self._fall_back(route, ticket)
        else:
            route = self._count(route, ticket)

        def on_edge(error: GatewayError) -> GatewayError:
            error.route = route
            return error

        try:
            result = await self.edge.generate(request)
        except ValueError as exc:
            raise on_edge(GatewayError(422, str(exc), kind="invalid")) from exc
        except BackendOverloaded as exc:
            self.metrics.backend_error(exc.kind, "edge")
            raise on_edge(GatewayError(
                503, f"the edge model is busy: {exc}", retry_after=exc.retry_after or 1.0, kind=exc.kind
            )) from exc  # fmt: skip
        except BackendError as exc:
            self.metrics.backend_error(exc.kind, "edge")
            raise on_edge(GatewayError(
                503, f"the edge model failed: {exc}", retry_after=exc.retry_after or 5.0, kind=exc.kind
            )) from exc  # fmt: skip
        return Served(result, route)

    async def _verify(self, job: ServeRequest, served: Served) -> Served:
        """Verify then escalate (gateway/escalation.py); the next arm up is the cloud, none for a private prompt."""
        fallback = None if job.private else self.cloud
        if self.escalation is None or not self.escalation.wanted(job.verify, served.route, fallback):
            return served
        assert fallback is not None
        run = self.escalation.run(job.generation, served.result, served.route, fallback=fallback, gate=job.cloud_gate)
        return Served(*await run)

    def _fall_back(self, route: Decision, ticket: int | None) -> Decision:
        return self._count(replace(route, backend="edge", reason="fallback"), ticket, force=True)

    def _count(self, route: Decision, ticket: int | None, force: bool = False) -> Decision:
        """Record what served the request: model decisions are already counted unless served otherwise.
        Returns the route with the ρ its commit enforced (a request counted only now: forced, private)."""
        if ticket is not None and not force:
            return route
        if ticket is not None:
            self.budget.record(route.backend, route.reason, ticket=ticket)
            return route
        kept = self.budget.count(route.backend, route.reason, prs=route.prs)
        return replace(route, rho=kept.rho)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"

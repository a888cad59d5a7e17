"""`ArmGateway`: the request service routing among N arms by predicted quality − λ·cost (`arms` setting).

The flow of `serving.Gateway` (compute check, cache, metrics) with the N-arm rule in place of the two-arm
controller: every request is scored (private ones too: the router runs here), the pacer picks the arm and
counts it at once, and a failed arm hands the request to the next best arm that is up. Which arms a request may
use: private → local arms only; `route: "edge"` → local arms; `route: "cloud"` → remote arms (none: local,
reason "budget"); auto → all. A failed local arm only ever falls back to another local arm (a prompt decided
local never leaves the machine); a failed remote arm to any arm.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace

from backends.base import (
    BackendError,
    BackendOverloaded,
    ContentModerated,
    GenerationRequest,
    ImageBackend,
)
from gateway.arm_escalation import ArmEscalation
from gateway.arm_routing import ArmSet
from gateway.budget import Decision, pacing
from gateway.budget.arm_pacer import ArmChoice
from gateway.routing import PromptScore
from gateway.serving import Gateway, GatewayError, Served, ServeRequest

log = logging.getLogger("routet2i.gateway")


class ArmGateway(Gateway):
    def __init__(self, *, arm_set: ArmSet, backends: Mapping[str, ImageBackend], **kwargs):
        """`backends`: one per arm name. The first local arm is the `edge` the base class reports on."""
        self.arm_set = arm_set
        self.backends = dict(backends)
        first_local = next(arm.name for arm in arm_set.specs if arm.local)
        arms = {arm.name: arm.identity() for arm in arm_set.specs}
        costs = {arm.name: arm.cost for arm in arm_set.specs}
        super().__init__(edge=self.backends[first_local], cloud=None, arms=arms, costs=costs, **kwargs)
        self.arm_escalation = (
            ArmEscalation(self.escalation, arm_set, self.backends) if self.escalation is not None else None
        )

    # ------------------------------------------------------------ deciding

    async def preview(self, prompt: str, private: bool = False) -> tuple[PromptScore, Decision]:
        score = await self.score(prompt)
        q = self.arm_set.qualities(score)
        choice = self.arm_set.pacer.preview(q, allowed=self.arm_set.allowed(local_only=private))
        decision = self._decision(choice, score, q)
        return score, replace(decision, reason="private") if private else decision

    async def _decide(self, job: ServeRequest) -> tuple[Decision, int | None]:
        score = await self.score(job.generation.prompt)
        q = self.arm_set.qualities(score)
        pacer, arms, n = self.arm_set.pacer, self.arm_set, job.generation.n
        if job.private:
            if job.cloud_gate is not None:
                job.cloud_gate(False)
            choice = pacer.decide(q, n=n, allowed=arms.allowed(local_only=True), reason="private")
            return self._decision(choice, score, q), choice.ticket
        if job.route == "edge":
            choice = pacer.decide(q, n=n, allowed=arms.allowed(local_only=True), reason="forced")
        elif job.route == "cloud" and any(not local for local in arms.local):
            choice = pacer.decide(
                q,
                n=n,
                allowed=arms.allowed(remote_only=True),
                reason="forced",
                refused_to=arms.allowed(local_only=True),
            )
        else:
            choice = pacer.decide(q, n=n)
            if job.route == "cloud":  # no remote arm at all: served locally, as a refused forced call would be
                choice = replace(choice, reason="budget")
        decision = self._decision(choice, score, q)
        return self._gated(decision, job.cloud_gate, n), choice.ticket

    def _decision(self, choice: ArmChoice, score: PromptScore, q: list[float]) -> Decision:
        spec = self.arm_set.specs[choice.arm]
        return Decision(
            "edge" if spec.local else "cloud", choice.reason, score.prs, None, self.arm_set.rho,  # type: ignore[arg-type]
            ticket=choice.ticket if choice.ticket >= 0 else None, arm=spec.name, cost=choice.cost, lam=choice.lam,
            qualities=tuple(q),
        )  # fmt: skip

    def _gated(self, decision: Decision, gate: Callable[[bool], bool] | None, n: int) -> Decision:
        """A client key over its cloud share: the best local arm instead (reason "budget")."""
        if gate is None or gate(decision.cloud) or not decision.cloud:
            return decision
        assert decision.qualities is not None and decision.lam is not None
        local = self.arm_set.allowed(local_only=True)
        order = pacing.ranking(decision.qualities, self.arm_set.costs, decision.lam, local)
        return self._moved(decision, order[0], "budget", n)

    def _moved(self, decision: Decision, arm: int, reason: str, n: int) -> Decision:
        """The decision served by arm `arm` instead, re-counted at its cost."""
        spec = self.arm_set.specs[arm]
        quality = decision.qualities[arm] if decision.qualities else None
        if decision.ticket is not None:
            self.arm_set.pacer.amend(decision.ticket, arm, n=n, quality=quality)
        return replace(decision, backend="edge" if spec.local else "cloud", arm=spec.name, reason=reason,  # type: ignore[arg-type]
                       cost=spec.cost * n)  # fmt: skip

    def _cached(self, route: Decision, ticket: int | None) -> Decision:
        if ticket is not None:
            index = self.arm_set.index[route.arm or ""]
            quality = route.qualities[index] if route.qualities else None
            self.arm_set.pacer.amend(ticket, index, cost=0.0, quality=quality)
        return replace(route, reason="cache", cost=0.0)

    # ------------------------------------------------------------ serving

    def _fallbacks(self, route: Decision, failed: set[int]) -> list[int]:
        """The arms a failed request may move to, best first: up (ready), not tried, local only after a local arm."""
        arms = self.arm_set
        local_only = arms.local[arms.index[route.arm or ""]]
        allowed = [
            i not in failed and (arms.local[i] or not local_only) and self.backends[name].ready()
            for i, name in enumerate(arms.names)
        ]
        assert route.qualities is not None and route.lam is not None
        return pacing.ranking(route.qualities, arms.costs, route.lam, allowed)

    async def _serve(self, request: GenerationRequest, route: Decision, ticket: int | None) -> Served:
        failed: set[int] = set()
        while True:
            index = self.arm_set.index[route.arm or ""]
            spec, backend = self.arm_set.specs[index], self.backends[route.arm or ""]
            call = replace(request, num_inference_steps=spec.steps) if spec.steps else request
            try:
                return Served(await backend.generate(call), route)
            except ContentModerated as exc:
                self.metrics.backend_error(exc.kind, spec.name)
                raise GatewayError(400, f"the provider of arm {spec.name} refused this prompt: {exc}",
                                   kind=exc.kind) from exc  # fmt: skip
            except ValueError as exc:
                raise self._failed(GatewayError(422, str(exc), kind="invalid"), route) from exc
            except BackendError as exc:
                self.metrics.backend_error(exc.kind, spec.name)
                failed.add(index)
                options = self._fallbacks(route, failed)
                if not options:
                    busy = isinstance(exc, BackendOverloaded)
                    raise self._failed(GatewayError(
                        503, f"arm {spec.name} {'is busy' if busy else 'failed'} and no other arm may serve it: {exc}",
                        retry_after=exc.retry_after or (1.0 if busy else 5.0), kind=exc.kind,
                    ), route) from exc  # fmt: skip
                log.warning("arm %s failed (%s); falling back to arm %s", spec.name, exc.kind,
                            self.arm_set.names[options[0]])  # fmt: skip
                route = self._moved(route, options[0], "fallback", request.n)

    async def _verify(self, job: ServeRequest, served: Served) -> Served:
        """Verify then escalate to the next dearer arm (gateway/arm_escalation.py)."""
        escalation = self.arm_escalation
        if escalation is None or not escalation.wanted(job.verify, served.route, private=job.private):
            return served
        run = escalation.run(job.generation, served.result, served.route, private=job.private, gate=job.cloud_gate)
        return Served(*await run)

    @staticmethod
    def _failed(error: GatewayError, route: Decision) -> GatewayError:
        error.route = route
        return error

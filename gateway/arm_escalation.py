"""Verify then escalate among N arms: an image that fails the check is re-run on the next dearer arm.

The two-arm flow (gateway/escalation.py) escalates from the edge to the cloud. With the `arms` setting, the image
of an arm the gateway chose (reasons "model", "budget", and "private": private requests may move up among the
local arms) is scored by the same `Escalation` check; under the threshold the request goes to the next arm up by
cost (cheapest dearer arm first, ties in settings order) that

- is up (`ready()`: its circuit breaker or health check lets it take calls),
- this request may use (a private request: local arms only; a private request on the dearest local arm keeps its
  image), and whose remote call the client key's cloud share allows,
- and whose calls-per-minute cap, the remote arms' cap and the window's hard cost cap let one more call through.

An arm that does not qualify is passed over for the next one up; none qualifies: the image is kept ("capped").
The escalation is counted on the request's own entry in the pacer's window (`ArmPacer.escalate`), so the window
sees the cost of both calls; a failed escalation gives its cost back and keeps the first image ("failed").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace

from backends.base import BackendError, ContentModerated, GenerationRequest, GenerationResult, ImageBackend
from gateway.arm_routing import ArmSet
from gateway.budget import Decision
from gateway.escalation import Escalation, Verdict

log = logging.getLogger("routet2i.gateway")
VERIFIED_REASONS = ("model", "budget", "private")


class ArmEscalation:
    def __init__(self, escalation: Escalation, arm_set: ArmSet, backends: Mapping[str, ImageBackend]):
        self.escalation, self.arm_set, self.backends = escalation, arm_set, backends

    def candidates(self, route: Decision, *, private: bool) -> list[int]:
        """The arms dearer than the one that served `route`, cheapest first (ties: settings order); local only
        for a private request."""
        arms = self.arm_set
        cost = arms.costs[arms.index[route.arm or ""]]
        dearer = [i for i in range(len(arms.specs)) if arms.costs[i] > cost and (arms.local[i] or not private)]
        return sorted(dearer, key=lambda i: (arms.costs[i], i))

    def wanted(self, verify: bool | None, route: Decision, *, private: bool) -> bool:
        """Checked: asked for (or the default), served on an arm the gateway chose, with a dearer arm to go to."""
        asked = self.escalation.default if verify is None else verify
        return asked and route.reason in VERIFIED_REASONS and bool(self.candidates(route, private=private))

    async def run(
        self, request: GenerationRequest, result: GenerationResult, route: Decision, *, private: bool,
        gate: Callable[[bool], bool] | None = None,
    ) -> tuple[GenerationResult, Decision, Verdict]:  # fmt: skip
        """Score `result`; under the threshold, re-run `request` on the next dearer arm that qualifies (module
        docstring). Returns what to serve, its route and the verdict."""
        check, arms, metrics = self.escalation, self.arm_set, self.escalation.metrics
        score = await check.score(request, result)
        if score is None:
            return check.done(result, route, Verdict("failed", None))
        if score >= check.threshold:
            return check.done(result, route, Verdict("pass", score))
        start = arms.index[route.arm or ""]
        first_cost = route.cost if route.cost is not None else arms.costs[start] * request.n
        key_refused = False
        for index in self.candidates(route, private=private):
            spec, backend = arms.specs[index], self.backends[arms.names[index]]
            if not backend.ready():
                continue
            if spec.remote:
                if key_refused:
                    continue
                if gate is not None and not gate(True):  # the key's cloud share: asked once per escalation
                    key_refused = True
                    continue
            quality = route.qualities[index] if route.qualities else None
            cost = arms.pacer.escalate(route.ticket, index, n=request.n, quality=quality)
            if cost is None:
                continue
            call = replace(request, num_inference_steps=spec.steps) if spec.steps else request
            try:
                better = await backend.generate(call)
            except ContentModerated as exc:  # the call was made (counted); the first image stands
                metrics.backend_error(exc.kind, spec.name)
                return check.done(result, route, Verdict("failed", score))
            except (BackendError, ValueError) as exc:  # no better image: give the call back, keep the first
                kind = exc.kind if isinstance(exc, BackendError) else "invalid"
                metrics.backend_error(kind, spec.name)
                log.warning("verify: escalation to arm %s failed (%s); serving arm %s's image", spec.name, kind,
                            route.arm)  # fmt: skip
                before = route.qualities[start] if route.qualities else None
                arms.pacer.give_back(route.ticket, index, cost=cost, to_arm=start, quality=before)
                return check.done(result, route, Verdict("failed", score))
            escalated = replace(
                route, backend="edge" if spec.local else "cloud", reason="escalated", arm=spec.name,
                cost=first_cost + cost,
            )  # fmt: skip
            metrics.observe_escalation(route.arm or "", spec.name)
            return check.done(better, escalated, Verdict("escalated", score, from_arm=route.arm, first_cost=first_cost))
        return check.done(result, route, Verdict("capped", score))

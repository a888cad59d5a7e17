"""Live cloud budget: keep the realised cloud fraction on ρ while the traffic mix drifts.

Route to the cloud iff PRŜ < α. A fixed offline α misses ρ as soon as the score distribution moves
(RouteLLM's failure), so `BudgetController` recomputes α on every request:

    credit = Σ over requests (ρ in force − margin − [served by the cloud]), clipped to ±credit_limit
    level  = ρ + clip(gain · credit / W, ±max_correction)
    α      = min(α_cap, level-quantile of the recent scores)

The credit is the realised cloud count measured against ρ: positive when the realised fraction runs
below ρ (α rises), negative above (α falls). It aims at an even rate of ρ − margin calls per request
rather than at filling the trailing window, so a burst of cloud calls never has to be "echoed" when
it leaves the window. The small margin (0.2 points by default) keeps the rate just under the window
cap below: a controller aiming exactly at the cap has the cap refuse its calls, the credit ratchets
up and α sits at α_cap, sending whichever prompt under ½ comes first instead of the lowest scores.
Two hard caps are enforced when a decision is committed:
- window: the last W = `decision_window` requests hold at most ⌊Σ ρᵢ⌋ cloud calls, each request
  earning the ρ in force when it came (⌊ρ·W⌋ while ρ is constant; after a ρ change the allowance
  moves from old to new over W requests, so every window lying after the change is held to the new ρ);
- cost: at most `cost_cap` cloud calls in the last 60 s.
A request the model sends to the cloud but a cap refuses goes to the edge with reason "budget"; so does a
request its caller forces to the cloud (`force`; a setting may let it exceed the window cap, never the cost cap).
Private and fallback requests are counted like the others (never refused).

State lives in a `BudgetStore`. Every write that must not interleave with another replica is one
store call (`commit`: push the score, check the caps, append the decision, move the credit), so a
Redis store can run it as one Lua script; the reads α is computed from may be slightly stale.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from gateway.budget.rules import caps_refuse, quantile_level
from gateway.budget.store import BudgetStore, Decision, WindowPolicy, WindowState, validate_choice, validate_prs


class BudgetController:
    """α on target from live traffic, with hard caps. One instance per process; state in the store.

    Use: `d = controller.decide(prs)` for a request the router decides (the decision is counted at
    once, so concurrent requests cannot overspend), then `controller.record(backend, reason,
    ticket=d.ticket)` only if it was served otherwise (cloud failed → ("edge", "fallback")).
    Requests forced by their caller are decided by `force` (the caps apply to a forced cloud call); private
    ones are counted with `record(backend, reason, prs=...)`, no ticket: never refused, they only lower what
    the model may send later.
    """

    def __init__(
        self,
        store: BudgetStore,
        *,
        score_window: int = 2000,
        decision_window: int = 1000,
        alpha_cap: float = 0.5,
        feedback_gain: float = 150.0,
        max_correction: float = 0.5,
        credit_limit: float = 10.0,
        credit_margin: float = 0.002,
        min_scores: int = 50,
        prior_alpha: float | None = None,
        clock: Callable[[], float] = time.time,
    ):
        if score_window < 1 or decision_window < 1 or min_scores < 1:
            raise ValueError("score_window, decision_window and min_scores must be >= 1")
        if not 0.0 <= alpha_cap <= 1.0:
            raise ValueError(f"alpha_cap must be in [0, 1], got {alpha_cap}")
        if feedback_gain < 0 or credit_limit < 0 or not 0.0 <= max_correction <= 1.0 or not 0.0 <= credit_margin < 1:
            raise ValueError("feedback_gain and credit_limit must be >= 0, max_correction and credit_margin in [0, 1)")
        if prior_alpha is not None and not 0.0 <= prior_alpha <= 1.0:
            raise ValueError(f"prior_alpha must be in [0, 1], got {prior_alpha}")
        self.store = store
        self.policy = WindowPolicy(score_window, decision_window, credit_limit, credit_margin)
        self.score_window = score_window
        self.decision_window = decision_window
        self.alpha_cap = alpha_cap
        self.feedback_gain = feedback_gain
        self.max_correction = max_correction
        self.min_scores = min_scores
        self.prior_alpha = prior_alpha
        self.clock = clock

    # ------------------------------------------------------------ α

    def _alpha(self, state: WindowState) -> float:
        rho = state.rho
        if rho <= 0.0:
            return 0.0
        if rho >= 1.0:
            return self.alpha_cap
        if state.scores < self.min_scores:
            # Cold start: the offline α if one was given, else the ρ-quantile of uniform scores.
            prior = self.prior_alpha if self.prior_alpha is not None else rho
            return min(self.alpha_cap, prior)
        level = quantile_level(
            rho, state.credit, gain=self.feedback_gain, window=self.decision_window, max_correction=self.max_correction
        )
        quantile = self.store.score_quantile(level)
        return min(self.alpha_cap, quantile if quantile is not None else rho)

    def alpha(self) -> float:
        """The α the next request would be compared with."""
        return self._alpha(self.store.state(self.clock()))

    @property
    def rho(self) -> float:
        return self.store.settings().rho

    # ------------------------------------------------------------ decisions

    def _commit(
        self, backend: str, reason: str, prs: float | None, now: float, enforce_caps: bool, window_cap: bool = True
    ) -> Decision:
        return self.store.commit(
            backend=backend,
            reason=reason,
            prs=prs,
            now=now,
            policy=self.policy,
            enforce_caps=enforce_caps,
            window_cap=window_cap,
        )

    def decide(self, prs: float) -> Decision:
        """Edge or cloud for a request the router scored `prs` (PRŜ: > ½ means the edge wins); counted at once."""
        prs = validate_prs(prs)
        now = self.clock()
        state = self.store.state(now)
        alpha = self._alpha(state)
        kept = self._commit("cloud" if prs < alpha else "edge", "model", prs, now, enforce_caps=True)
        # The ρ the atomic commit enforced (another replica may have changed ρ since `state` was read).
        return replace(kept, prs=prs, alpha=alpha, rho=kept.rho if kept.rho is not None else state.rho)

    def force(self, backend: str, *, may_exceed_rho: bool = False) -> Decision:
        """A request its caller forced to `backend` (`route`: edge or cloud), counted at once like `decide`.
        Forced to the cloud it obeys the hard caps (the window cap unless `may_exceed_rho`, the cost cap
        always): refused, it goes to the edge with reason "budget". Served otherwise later: `record` with its ticket."""
        now = self.clock()
        kept = self._commit(backend, "forced", None, now, enforce_caps=True, window_cap=not may_exceed_rho)
        return kept if kept.rho is not None else replace(kept, rho=self.store.settings().rho)

    def escalate(self) -> Decision:
        """A second, cloud call for a request the edge served already (verify-then-escalate), under the same hard
        caps as any cloud call and counted as its own entry (reason "escalated"): ρ is a share of calls.
        Refused: ("edge", "budget") and nothing counted (checked on the window as it stands, like `preview`; a
        concurrent commit that still trips a cap is refused atomically and counted as that edge entry)."""
        now = self.clock()
        state = self.store.state(now)
        if caps_refuse(
            cloud=state.cloud, allowance_micro=state.allowance_micro, decisions=state.decisions,
            decision_window=self.decision_window, rho=state.rho, cloud_last_minute=state.cloud_last_minute,
            cost_cap=state.cost_cap,
        ):  # fmt: skip
            return Decision("edge", "budget", rho=state.rho)
        kept = self._commit("cloud", "escalated", None, now, enforce_caps=True)
        return kept if kept.rho is not None else replace(kept, rho=state.rho)

    def preview(self, prs: float, *, private: bool = False) -> Decision:
        """The decision a request with this score would get now, caps included, without counting it (POST /route).

        Read on the window as it stands: a commit first drops the oldest entry of a full window, so with
        concurrent traffic or a full window the decision itself can differ by that one entry."""
        prs = validate_prs(prs)
        state = self.store.state(self.clock())
        alpha = self._alpha(state)
        if private:
            return Decision("edge", "private", prs, alpha, state.rho)
        if prs >= alpha:
            return Decision("edge", "model", prs, alpha, state.rho)
        refused = caps_refuse(
            cloud=state.cloud, allowance_micro=state.allowance_micro, decisions=state.decisions,
            decision_window=self.decision_window, rho=state.rho, cloud_last_minute=state.cloud_last_minute,
            cost_cap=state.cost_cap,
        )  # fmt: skip
        return Decision("edge" if refused else "cloud", "budget" if refused else "model", prs, alpha, state.rho)

    def record(self, backend: str, reason: str, *, ticket: int | None = None, prs: float | None = None) -> bool:
        """Count what actually served a request: with the `ticket` of its decision, replace that decision
        (False if it has left every window); without, count a request that bypassed `decide` (its `prs`,
        if scored, joins the score window)."""
        validate_choice(backend, reason)
        now = self.clock()
        if ticket is not None:
            return self.store.amend(ticket, backend=backend, reason=reason, now=now, policy=self.policy)
        self.count(backend, reason, prs=prs)
        return True

    def count(self, backend: str, reason: str, *, prs: float | None = None) -> Decision:
        """Count a request that bypassed `decide` (forced, private; never refused); the decision as committed,
        with the ρ its commit enforced."""
        validate_choice(backend, reason)
        prs = None if prs is None else validate_prs(prs)
        return self._commit(backend, reason, prs, self.clock(), enforce_caps=False)

    # ------------------------------------------------------------ admin

    def set_rho(self, rho: float) -> None:
        self.store.set_rho(rho)

    def set_cost_cap(self, cost_cap: int | None) -> None:
        self.store.set_cost_cap(cost_cap)

    def snapshot(self) -> dict[str, Any]:
        """ρ, α, windowed cloud fraction, window fill and cost-cap use (for /admin/budget and metrics)."""
        state = self.store.state(self.clock())
        status = self.store.status()
        return {
            "rho": state.rho,
            "alpha": self._alpha(state),
            "alpha_cap": self.alpha_cap,
            "cloud_fraction": state.cloud_fraction,
            "cloud_calls": state.cloud,
            "decisions": state.decisions,
            "decision_window": self.decision_window,
            "window_cloud_limit": state.cloud_limit(self.decision_window),
            "credit": state.credit,
            "scores": state.scores,
            "score_window": self.score_window,
            "cost_cap": state.cost_cap,
            "cloud_calls_last_minute": state.cloud_last_minute,
            "cost_cap_use": state.cloud_last_minute / state.cost_cap if state.cost_cap else None,
            "store": status.kind,
            "store_shared": status.shared,
            "store_up": status.up,
            "store_failovers": status.failovers,
        }

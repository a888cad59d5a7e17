"""`ArmPacer`: the N-arm rule's live state (λ, credit, windows, per-arm caps) in this process.

Use: `choice = pacer.decide(quality, n=..., allowed=...)` for a request the router scored (counted at once, so
concurrent requests cannot overspend), then `pacer.amend(choice.ticket, arm, "fallback")` only if another arm
served it. Requests that bypass the rule (a cache hit) are counted with `pacer.count`. The arithmetic is in
`pacing.py`; this class only keeps the numbers, in this process. `gateway.budget.arm_redis.RedisArmPacer` keeps the
same numbers in Redis (one window for every replica) with the same interface and arithmetic.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.budget import pacing

CAP_PERIOD_S = 60.0


@dataclass(frozen=True)
class ArmChoice:
    """Which arm serves a request and why; `ticket` names the counted entry (for `amend`)."""

    arm: int
    reason: str
    lam: float
    cost: float
    ticket: int
    quality: float | None = None  # the chosen arm's predicted quality (None: not scored)


@dataclass
class _Entry:
    ticket: int
    arm: int
    cost: float
    allowance: float  # the budget in force when it came
    quality: float | None


def arm_numbers(entries: Sequence[tuple[int, float, float | None]], calls: Sequence[int]) -> list[dict[str, Any]]:
    """Each arm's requests, share, spend and mean predicted quality over the window's (arm, cost, quality) entries,
    and its calls of the last minute."""
    per_arm = []
    for a, recent in enumerate(calls):
        mine = [e for e in entries if e[0] == a]
        scored = [e[2] for e in mine if e[2] is not None]
        per_arm.append({
            "requests": len(mine), "share": len(mine) / len(entries) if entries else None,
            "spent": sum(e[1] for e in mine), "mean_quality": float(np.mean(scored)) if scored else None,
            "calls_last_minute": recent,
        })  # fmt: skip
    return per_arm


class ArmPacer:
    def __init__(
        self,
        costs: Sequence[float],
        *,
        budget: float,
        decision_window: int = 1000,
        score_window: int = 1000,
        caps: Sequence[int | None] | None = None,
        remote: Sequence[bool] | None = None,
        remote_cap: int | None = None,
        gain: float = 400.0,
        max_correction: float = 1.0,
        credit_limit: float = 20.0,
        credit_margin: float = 0.002,
        clock: Callable[[], float] = time.time,
    ):
        if len(costs) < 1 or min(costs) < 0:
            raise ValueError("costs: one non-negative cost per arm")
        self.costs = np.asarray(costs, dtype=np.float64)
        self.caps = list(caps) if caps is not None else [None] * len(costs)
        self.remote = list(remote) if remote is not None else [False] * len(costs)
        self.remote_cap = remote_cap  # calls per minute over all remote arms together (the two-arm cost cap)
        self.decision_window, self.score_window = decision_window, score_window
        self.gain, self.max_correction = gain, max_correction
        self.credit_limit, self.credit_margin = credit_limit, credit_margin
        self.clock = clock
        self._lock = threading.Lock()
        self._budget = self.validate_budget(budget)
        self._credit = 0.0
        self._entries: deque[_Entry] = deque()
        self._window_cost = 0.0
        self._window_allowance = 0.0
        self._scores = np.zeros((score_window, len(costs)))  # a ring of the recent predictions
        self._filled = 0  # rows of the ring in use
        self._next = 0  # the row the next prediction goes to
        self._calls: list[deque[float]] = [deque() for _ in costs]
        self._ticket = 0
        self._lam = 0.0

    # ------------------------------------------------------------ settings

    def validate_budget(self, budget: Any) -> float:
        """The budget as a float no lower than the cheapest arm's cost, or ValueError saying why."""
        if isinstance(budget, bool) or not isinstance(budget, int | float) or not np.isfinite(budget) or budget < 0:
            raise ValueError(f"cost_budget must be a finite number >= 0, got {budget!r}")
        if budget + pacing.EPS < float(self.costs.min()):
            raise ValueError(
                f"cost_budget {budget} is below the cheapest arm's cost {float(self.costs.min())}: no mix of arms "
                "costs that little per request"
            )
        return float(budget)

    @property
    def budget(self) -> float:
        return self._budget

    def set_budget(self, budget: float) -> None:
        budget = self.validate_budget(budget)
        with self._lock:
            self._budget = budget

    # ------------------------------------------------------------ λ

    def _lambda(self) -> float:
        if not self._filled:
            return self._lam
        target = pacing.target_cost(
            self._budget, self._credit, gain=self.gain, window=self.decision_window, max_correction=self.max_correction
        )
        return pacing.calibrated_lambda(self._scores[: self._filled], self.costs, target, hint=self._lam or None)

    def _push(self, q: np.ndarray) -> None:
        self._scores[self._next] = q
        self._next = (self._next + 1) % self.score_window
        self._filled = min(self._filled + 1, self.score_window)

    @property
    def lam(self) -> float:
        """λ in force (the last one computed)."""
        return self._lam

    # ------------------------------------------------------------ decisions

    def decide(
        self, quality: Sequence[float], *, n: int = 1, allowed: Sequence[bool] | None = None, reason: str = "model",
        refused_to: Sequence[bool] | None = None,
    ) -> ArmChoice:  # fmt: skip
        """The best arm by q − λ·c among `allowed` that the caps let through; counted at once. The first choice
        refused by a cap: the next in the ranking, reason "budget" (unless `reason` is "private", never changed).
        All refused: the best of `refused_to` the caps let through (a forced remote call refused: a local arm),
        else the cheapest of those (or of `allowed`), which serves anyway (counted, reason "budget")."""
        q = np.asarray(quality, dtype=np.float64)
        if q.shape != self.costs.shape or not np.all(np.isfinite(q)):
            raise ValueError(f"quality: {len(self.costs)} finite numbers, one per arm")
        with self._lock:
            now = self.clock()
            self._push(q)
            self._lam = lam = self._lambda()
            order = pacing.ranking(q, self.costs, lam, allowed)
            if not order:
                raise ValueError("no arm is allowed for this request")
            chosen = next((a for a in order if self._caps_allow(a, n, now)), None)
            if chosen is None:
                spare = pacing.ranking(q, self.costs, lam, refused_to) if refused_to is not None else []
                chosen = next((a for a in spare if self._caps_allow(a, n, now)), None)
                if chosen is None:
                    chosen = min(spare or order, key=lambda a: self.costs[a])
            if chosen != order[0] and reason != "private":
                reason = "budget"
            ticket = self._append(chosen, n, now, float(q[chosen]))
            return ArmChoice(chosen, reason, lam, float(self.costs[chosen] * n), ticket, float(q[chosen]))

    def preview(self, quality: Sequence[float], *, n: int = 1, allowed: Sequence[bool] | None = None) -> ArmChoice:
        """What `decide` would pick now, counting nothing (ticket -1); λ from the window as it stands."""
        q = np.asarray(quality, dtype=np.float64)
        with self._lock:
            now = self.clock()
            lam = self._lambda()
            order = pacing.ranking(q, self.costs, lam, allowed)
            if not order:
                raise ValueError("no arm is allowed for this request")
            chosen = next((a for a in order if self._caps_allow(a, n, now)), min(order, key=lambda a: self.costs[a]))
            reason = "model" if chosen == order[0] else "budget"
            return ArmChoice(chosen, reason, lam, float(self.costs[chosen] * n), -1, float(q[chosen]))

    def count(self, arm: int, *, cost: float, quality: float | None = None) -> int:
        """Count a request served without the rule at `cost` (a cache hit: 0); returns its ticket."""
        with self._lock:
            return self._append(arm, 1, self.clock(), quality, cost=cost)

    def amend(
        self, ticket: int, arm: int, *, n: int = 1, quality: float | None = None, cost: float | None = None
    ) -> bool:
        """Another arm served a counted request (a fallback), or nothing did (a cache hit: `cost` 0): its cost
        replaces the first one's. False when the ticket has left the window (only the credit moves then)."""
        with self._lock:
            cost = float(self.costs[arm] * n) if cost is None else float(cost)
            if cost > 0:
                self._calls[arm].append(self.clock())
            for entry in self._entries:
                if entry.ticket == ticket:
                    moved = (entry.cost - cost) / self._budget if self._budget > 0 else 0.0
                    self._credit = min(self.credit_limit, max(-self.credit_limit, self._credit + moved))
                    self._window_cost += cost - entry.cost
                    entry.arm, entry.cost, entry.quality = arm, cost, quality
                    return True
            return False

    def escalate(self, ticket: int | None, arm: int, *, n: int = 1, quality: float | None = None) -> float | None:
        """A second call, on `arm`, for a counted request (verify then escalate): if the arm's calls-per-minute cap,
        the remote cap and the window's hard cap allow it, its cost is added to the request's entry (the window
        sees both calls; the entry now names `arm`) and returned; refused, None and nothing counted."""
        with self._lock:
            now = self.clock()
            cost = float(self.costs[arm] * n)
            if not self._rate_allows(arm, now):
                return None
            allowance = self._window_allowance + max(self.decision_window - len(self._entries), 0) * self._budget
            if not pacing.window_allows(self._window_cost, allowance, cost):
                return None
            if cost > 0:
                self._calls[arm].append(now)
            self._charge(ticket, cost, arm=arm, quality=quality)
            return cost

    def give_back(
        self, ticket: int | None, arm: int, *, cost: float, to_arm: int, quality: float | None = None
    ) -> None:
        """Undo `escalate` (its call on `arm` failed): the cost and the call leave the window, the entry names
        `to_arm` again."""
        with self._lock:
            calls = self._calls[arm]
            if cost > 0 and calls:
                calls.pop()
            self._charge(ticket, -cost, arm=to_arm, quality=quality)

    # ------------------------------------------------------------ internals (lock held)

    def _charge(self, ticket: int | None, cost: float, *, arm: int, quality: float | None) -> None:
        """Add `cost` to the entry of `ticket` (the credit moves whether or not it is still in the window)."""
        spent = cost / self._budget if self._budget > 0 else 0.0
        self._credit = min(self.credit_limit, max(-self.credit_limit, self._credit - spent))
        for entry in self._entries:
            if entry.ticket == ticket:
                entry.cost += cost
                entry.arm, entry.quality = arm, quality
                self._window_cost += cost
                return

    def _prune_calls(self, arm: int, now: float) -> deque[float]:
        calls = self._calls[arm]
        while calls and calls[0] <= now - CAP_PERIOD_S:
            calls.popleft()
        return calls

    def remote_calls_last_minute(self, now: float) -> int:
        return sum(len(self._prune_calls(a, now)) for a in range(len(self.costs)) if self.remote[a])

    def _rate_allows(self, arm: int, now: float) -> bool:
        """The arm's own calls-per-minute cap and (a remote arm) the cap on all remote arms together."""
        cap = self.caps[arm]
        if cap is not None and len(self._prune_calls(arm, now)) + 1 > cap:
            return False
        remote_cap = self.remote_cap
        return not (self.remote[arm] and remote_cap is not None and self.remote_calls_last_minute(now) + 1 > remote_cap)

    def _caps_allow(self, arm: int, n: int, now: float) -> bool:
        if not self._rate_allows(arm, now):
            return False
        full = len(self._entries) >= self.decision_window
        oldest = self._entries[0] if full else None
        cost = self._window_cost - (oldest.cost if oldest else 0.0)
        kept = len(self._entries) - (1 if full else 0) + 1  # entries once this one is in
        allowance = (
            self._window_allowance - (oldest.allowance if oldest else 0.0) + self._budget
            + max(self.decision_window - kept, 0) * self._budget
        )  # fmt: skip
        return pacing.window_allows(cost, allowance, float(self.costs[arm] * n))

    def _append(self, arm: int, n: int, now: float, quality: float | None, cost: float | None = None) -> int:
        cost = float(self.costs[arm] * n) if cost is None else cost
        if cost > 0:
            self._calls[arm].append(now)
        if len(self._entries) >= self.decision_window:
            old = self._entries.popleft()
            self._window_cost -= old.cost
            self._window_allowance -= old.allowance
        self._ticket += 1
        self._entries.append(_Entry(self._ticket, arm, cost, self._budget, quality))
        self._window_cost += cost
        self._window_allowance += self._budget
        self._credit = pacing.credit_after(
            self._credit, budget=self._budget, margin=self.credit_margin, cost=cost, limit=self.credit_limit
        )
        return self._ticket

    # ------------------------------------------------------------ reading

    def snapshot(self) -> dict[str, Any]:
        """Budget, λ, the window's mean cost and each arm's share, cost and mean predicted quality there."""
        with self._lock:
            entries = list(self._entries)
            now = self.clock()
            calls = [len(self._prune_calls(a, now)) for a in range(len(self.costs))]
            per_arm = arm_numbers([(e.arm, e.cost, e.quality) for e in entries], calls)
            return {
                "cost_budget": self._budget,
                "lambda": self._lam,
                "mean_cost": self._window_cost / len(entries) if entries else None,
                "decisions": len(entries),
                "decision_window": self.decision_window,
                "window_cost": self._window_cost,
                "window_allowance": self._window_allowance,
                "credit": self._credit,
                "scores": self._filled,
                "remote_calls_last_minute": self.remote_calls_last_minute(now),
                "arms": per_arm,
            }

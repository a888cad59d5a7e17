"""`RedisArmPacer`: the N-arm pacer with λ, the credit, the cost window and the caps in Redis, shared by replicas.

The same interface and arithmetic as `ArmPacer` (gateway/budget/arm_pacer.py), so `ArmSet` takes either. What
must not interleave across replicas is one Lua script each (gateway/budget/arm_lua.py): a decision (push the
prediction, drop the entry that leaves the window, pick the first arm of the ranking the caps let through, append
it, move the credit), an amend, an escalation and its give-back. λ is computed here, as in one process, from the
shared credit and the shared window of recent predictions, which each replica mirrors incrementally (it reads only
the rows added since its last read); like the two-arm α, it is read a moment before the atomic commit, so with
concurrent replicas it can be one decision stale, while the hard caps are checked inside the commit.

Redis failing: the replica serves on its own in-memory `ArmPacer` (its tickets negated), holding the budget over its
own traffic, says so in the log and retries every `retry_interval_s`; a budget set while alone is written to Redis
on re-join unless Redis holds a newer one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import redis

from gateway.budget import arm_lua, pacing
from gateway.budget.arm_pacer import CAP_PERIOD_S, ArmChoice, ArmPacer, arm_numbers
from gateway.budget.redis_store import redis_client

log = logging.getLogger("routet2i.budget")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _float(value: Any) -> float:
    return float(_text(value))


def _cap(value: Any) -> int | None:
    return int(float(_text(value))) if _text(value) else None


def _opt(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def layout_id(costs: Sequence[float], names: Sequence[str] | None = None) -> str:
    """A short hash of the arm list (names and costs): replicas with another list keep another window."""
    names = names or [str(i) for i in range(len(costs))]
    listed = [[name, float(cost)] for name, cost in zip(names, costs, strict=True)]
    return hashlib.sha256(json.dumps(listed).encode()).hexdigest()[:12]


class RedisArmPacer:
    def __init__(
        self,
        client: redis.Redis,
        costs: Sequence[float],
        *,
        budget: float,
        prefix: str = "routet2i",
        names: Sequence[str] | None = None,
        retry_interval_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        **options: Any,
    ):
        """`budget` and `remote_cap` (in `options`) seed Redis only if it holds no settings for this arm list yet
        (Redis wins, like the state file does for one process). `options`: those of `ArmPacer`."""
        self.local = ArmPacer(costs, budget=budget, clock=clock, **options)  # the fallback, and the validator
        self.costs, self.caps, self.remote = self.local.costs, self.local.caps, self.local.remote
        self.decision_window, self.score_window = self.local.decision_window, self.local.score_window
        self.gain, self.max_correction = self.local.gain, self.local.max_correction
        self.credit_limit, self.credit_margin = self.local.credit_limit, self.local.credit_margin
        self.clock, self.client, self.retry_interval_s = clock, client, retry_interval_s
        base = f"{{{prefix}}}:arms:{layout_id(costs, names)}"
        self.keys = [f"{base}:{name}" for name in arm_lua.KEY_NAMES] + [f"{base}:calls:{a}" for a in range(len(costs))]
        self._scripts = {
            name: client.register_script(getattr(arm_lua, name))
            for name in ("STATE", "COMMIT", "AMEND", "ESCALATE", "GIVE_BACK", "SNAPSHOT")
        }
        self._lock = threading.Lock()  # the mirror and the switch state
        self._rows, self._seen = np.zeros((0, len(costs))), 0  # this replica's copy of the predictions; its seq
        self._known_budget, self._known_cap = float(budget), self.local.remote_cap
        self._known_at = 0.0  # when this replica last changed the settings (0: a default, never wins)
        self._pending = False  # a settings change made while Redis was away
        self._up, self._retry_at = True, 0.0
        self._json = {"costs": json.dumps([float(c) for c in self.costs]),
                      "caps": json.dumps([-1 if c is None else int(c) for c in self.caps]),
                      "remote": json.dumps([1 if r else 0 for r in self.remote])}  # fmt: skip

    @classmethod
    def from_url(cls, url: str, costs: Sequence[float], *, timeout_s: float = 0.25, **kwargs: Any) -> RedisArmPacer:
        return cls(redis_client(url, timeout_s=timeout_s), costs, **kwargs)

    # ------------------------------------------------------------ Redis or the local fallback

    def _seed(self) -> list[str]:
        cap = self._known_cap
        return [repr(self._known_budget), "" if cap is None else str(cap), repr(self._known_at)]

    def _run(self, name: str, *args: Any) -> Any:
        return self._scripts[name](keys=self.keys, args=[*self._seed(), *args])

    def _shared(self) -> bool:
        """Whether to try Redis now (up, or down long enough to retry); re-joining pushes a change made alone."""
        if self._up:
            return True
        if time.monotonic() < self._retry_at:
            return False
        try:
            if self._pending:
                remote_at = self.client.hget(self.keys[0], "updated_at")
                if remote_at is None or _float(remote_at) < self._known_at:
                    self._write_settings()
                self._pending = False
            self.client.ping()
        except redis.RedisError:
            self._retry_at = time.monotonic() + self.retry_interval_s
            return False
        self._up = True
        log.warning("arm pacer: Redis answers again; λ and the cost window are shared again")
        return True

    def _fail(self, exc: Exception) -> None:
        if self._up:
            log.warning(
                "arm pacer: Redis failed (%s: %s); pacing on this replica's own window and retrying every %.1f s",
                type(exc).__name__, exc, self.retry_interval_s,
            )  # fmt: skip
        self._up, self._retry_at = False, time.monotonic() + self.retry_interval_s

    def _adopt(self, budget: float, cap: int | None) -> None:
        """Keep the local fallback on the shared settings."""
        if budget != self._known_budget:
            self._known_budget = budget
            self.local.set_budget(budget)
        self._known_cap = self.local.remote_cap = cap

    @staticmethod
    def _local(choice: ArmChoice) -> ArmChoice:
        return replace(choice, ticket=-choice.ticket)

    # ------------------------------------------------------------ settings

    def validate_budget(self, budget: Any) -> float:
        return self.local.validate_budget(budget)

    @property
    def budget(self) -> float:
        if self._shared():
            try:
                raw = self.client.hget(self.keys[0], "budget")
                if raw is not None:
                    self._adopt(_float(raw), self._known_cap)
            except redis.RedisError as exc:
                self._fail(exc)
        return self._known_budget

    def set_budget(self, budget: float) -> None:
        budget = self.validate_budget(budget)
        self._known_at = time.time()
        self._adopt(budget, self._known_cap)
        self._write_or_defer()

    @property
    def remote_cap(self) -> int | None:
        if self._shared():
            try:
                raw = self.client.hget(self.keys[0], "remote_cap")
                if raw is not None:
                    self._adopt(self._known_budget, _cap(raw))
            except redis.RedisError as exc:
                self._fail(exc)
        return self._known_cap

    @remote_cap.setter
    def remote_cap(self, cap: int | None) -> None:
        self._known_at = time.time()
        self._adopt(self._known_budget, cap)
        self._write_or_defer()

    def _write_settings(self) -> None:
        budget, cap, at = self._seed()
        self.client.hset(self.keys[0], mapping={"budget": budget, "remote_cap": cap, "updated_at": at})

    def _write_or_defer(self) -> None:
        if self._shared():
            try:
                self._write_settings()
                return
            except redis.RedisError as exc:
                self._fail(exc)
        self._pending = True

    # ------------------------------------------------------------ λ

    @property
    def lam(self) -> float:
        """λ in force (the last one computed by any replica)."""
        if self._shared():
            try:
                raw = self.client.hget(self.keys[1], "lam")
                return 0.0 if raw is None else _float(raw)
            except redis.RedisError as exc:
                self._fail(exc)
        return self.local.lam

    def _state(self, now: float) -> dict[str, Any]:
        """The shared numbers, with this replica's copy of the prediction window brought up to date."""
        with self._lock:
            raw = self._run("STATE", repr(now), repr(CAP_PERIOD_S), str(self._seen))
            rows = [np.array([float(x) for x in _text(r).split(",")]) for r in raw[11]]
            fresh = np.stack(rows) if rows else np.zeros((0, len(self.costs)))
            self._rows = fresh if _text(raw[10]) == "1" else np.vstack([self._rows, fresh])
            self._rows = self._rows[-self.score_window :]
            self._seen = int(raw[9])
            window = self._rows
        self._adopt(_float(raw[0]), _cap(raw[1]))
        return {
            "credit": _float(raw[2]), "lam": _float(raw[3]), "window_cost": _float(raw[4]),
            "window_allowance": _float(raw[5]), "decisions": int(raw[6]), "oldest_cost": _float(raw[7]),
            "oldest_allowance": _float(raw[8]), "rows": window, "calls": [int(c) for c in raw[12:]],
        }  # fmt: skip

    def _lambda(self, state: dict[str, Any], rows: np.ndarray) -> float:
        if not len(rows):
            return state["lam"]
        target = pacing.target_cost(
            self._known_budget, state["credit"], gain=self.gain, window=self.decision_window,
            max_correction=self.max_correction,
        )  # fmt: skip
        return pacing.calibrated_lambda(rows, self.costs, target, hint=state["lam"] or None)

    # ------------------------------------------------------------ decisions

    def decide(
        self, quality: Sequence[float], *, n: int = 1, allowed: Sequence[bool] | None = None, reason: str = "model",
        refused_to: Sequence[bool] | None = None,
    ) -> ArmChoice:  # fmt: skip
        """As `ArmPacer.decide`, on the shared window."""
        q = np.asarray(quality, dtype=np.float64)
        if q.shape != self.costs.shape or not np.all(np.isfinite(q)):
            raise ValueError(f"quality: {len(self.costs)} finite numbers, one per arm")
        if self._shared():
            try:
                return self._decide_shared(q, n, allowed, reason, refused_to)
            except redis.RedisError as exc:
                self._fail(exc)
        return self._local(self.local.decide(q, n=n, allowed=allowed, reason=reason, refused_to=refused_to))

    def _decide_shared(
        self, q: np.ndarray, n: int, allowed: Sequence[bool] | None, reason: str, refused_to: Sequence[bool] | None
    ) -> ArmChoice:
        now = self.clock()
        state = self._state(now)
        lam = self._lambda(state, np.vstack([state["rows"], q[None, :]])[-self.score_window :])
        order = pacing.ranking(q, self.costs, lam, allowed)
        if not order:
            raise ValueError("no arm is allowed for this request")
        spare = pacing.ranking(q, self.costs, lam, refused_to) if refused_to is not None else []
        row = ",".join(repr(float(x)) for x in q)
        ticket, chosen = self._run(
            "COMMIT", repr(now), repr(CAP_PERIOD_S), json.dumps(order), json.dumps(spare), str(n), self._json["costs"],
            self._json["caps"], self._json["remote"], str(self.decision_window), str(self.score_window),
            repr(self.credit_margin), repr(self.credit_limit), repr(lam), row, "1", "", "",
        )  # fmt: skip
        chosen = int(chosen)
        if chosen != order[0] and reason != "private":
            reason = "budget"
        return ArmChoice(chosen, reason, lam, float(self.costs[chosen] * n), int(ticket), float(q[chosen]))

    def preview(self, quality: Sequence[float], *, n: int = 1, allowed: Sequence[bool] | None = None) -> ArmChoice:
        """What `decide` would pick now, counting nothing (ticket -1)."""
        q = np.asarray(quality, dtype=np.float64)
        if self._shared():
            try:
                state = self._state(self.clock())
            except redis.RedisError as exc:
                self._fail(exc)
            else:
                lam = self._lambda(state, state["rows"])
                order = pacing.ranking(q, self.costs, lam, allowed)
                if not order:
                    raise ValueError("no arm is allowed for this request")
                cheapest = min(order, key=lambda a: self.costs[a])
                chosen = next((a for a in order if self._allows(state, a, n)), cheapest)
                reason = "model" if chosen == order[0] else "budget"
                return ArmChoice(chosen, reason, lam, float(self.costs[chosen] * n), -1, float(q[chosen]))
        return self.local.preview(q, n=n, allowed=allowed)

    def _allows(self, state: dict[str, Any], arm: int, n: int) -> bool:
        """`ArmPacer._caps_allow` on a read of the shared state."""
        calls, cap, remote_cap = state["calls"], self.caps[arm], self._known_cap
        if cap is not None and calls[arm] + 1 > cap:
            return False
        remote_calls = sum(c for c, r in zip(calls, self.remote, strict=True) if r)
        if self.remote[arm] and remote_cap is not None and remote_calls + 1 > remote_cap:
            return False
        full = state["decisions"] >= self.decision_window
        cost = state["window_cost"] - (state["oldest_cost"] if full else 0.0)
        kept = state["decisions"] - (1 if full else 0) + 1
        budget = self._known_budget
        allowance = (
            state["window_allowance"] - (state["oldest_allowance"] if full else 0.0) + budget
            + max(self.decision_window - kept, 0) * budget
        )  # fmt: skip
        return pacing.window_allows(cost, allowance, float(self.costs[arm] * n))

    def count(self, arm: int, *, cost: float, quality: float | None = None) -> int:
        """Count a request served without the rule at `cost` (a cache hit: 0); returns its ticket."""
        if self._shared():
            try:
                ticket, _ = self._run(
                    "COMMIT", repr(self.clock()), repr(CAP_PERIOD_S), json.dumps([arm]), "[]", "1",
                    self._json["costs"], self._json["caps"], self._json["remote"], str(self.decision_window),
                    str(self.score_window), repr(self.credit_margin), repr(self.credit_limit), "", "", "0",
                    repr(float(cost)), _opt(quality),
                )  # fmt: skip
                return int(ticket)
            except redis.RedisError as exc:
                self._fail(exc)
        return -self.local.count(arm, cost=cost, quality=quality)

    def amend(
        self, ticket: int, arm: int, *, n: int = 1, quality: float | None = None, cost: float | None = None
    ) -> bool:
        """As `ArmPacer.amend`: another arm served a counted request, or nothing did (`cost` 0)."""
        cost = float(self.costs[arm] * n) if cost is None else float(cost)
        if ticket > 0 and self._shared():
            try:
                args = [str(ticket), str(arm), repr(cost), _opt(quality), repr(self.clock()), repr(self.credit_limit)]
                return bool(self._run("AMEND", *args))
            except redis.RedisError as exc:
                self._fail(exc)
        return self.local.amend(-ticket, arm, n=n, quality=quality, cost=cost)

    def escalate(self, ticket: int | None, arm: int, *, n: int = 1, quality: float | None = None) -> float | None:
        """As `ArmPacer.escalate`: a second call on `arm` for a counted request, under the caps; None: refused."""
        cost = float(self.costs[arm] * n)
        if (ticket is None or ticket > 0) and self._shared():
            try:
                allowed = self._run(
                    "ESCALATE", "" if ticket is None else str(ticket), str(arm), repr(cost), _opt(quality),
                    repr(self.clock()), repr(CAP_PERIOD_S), self._json["caps"], self._json["remote"],
                    str(self.decision_window), repr(self.credit_limit),
                )  # fmt: skip
                return cost if int(allowed) else None
            except redis.RedisError as exc:
                self._fail(exc)
        return self.local.escalate(None if ticket is None else -ticket, arm, n=n, quality=quality)

    def give_back(
        self, ticket: int | None, arm: int, *, cost: float, to_arm: int, quality: float | None = None
    ) -> None:
        """Undo `escalate`."""
        if (ticket is None or ticket > 0) and self._shared():
            try:
                self._run("GIVE_BACK", "" if ticket is None else str(ticket), str(arm), repr(float(cost)), str(to_arm),
                          _opt(quality), repr(self.credit_limit))  # fmt: skip
                return
            except redis.RedisError as exc:
                self._fail(exc)
        self.local.give_back(None if ticket is None else -ticket, arm, cost=cost, to_arm=to_arm, quality=quality)

    # ------------------------------------------------------------ reading

    def snapshot(self) -> dict[str, Any]:
        """As `ArmPacer.snapshot`, of the shared window (plus `store`: "redis", or "memory" while alone)."""
        if self._shared():
            try:
                raw = self._run("SNAPSHOT", repr(self.clock()), repr(CAP_PERIOD_S))
            except redis.RedisError as exc:
                self._fail(exc)
            else:
                self._adopt(_float(raw[0]), _cap(raw[1]))
                return self._snapshot(raw)
        return {**self.local.snapshot(), "store": "memory"}

    def _snapshot(self, raw: list) -> dict[str, Any]:
        entries = []
        for item in raw[7]:
            arm, cost, _, quality = _text(item).split("|")
            entries.append((int(arm), float(cost), float(quality) if quality else None))
        calls = [int(c) for c in raw[8]]
        per_arm = arm_numbers(entries, calls)
        window_cost = _float(raw[4])
        return {
            "cost_budget": self._known_budget, "lambda": _float(raw[3]),
            "mean_cost": window_cost / len(entries) if entries else None, "decisions": len(entries),
            "decision_window": self.decision_window, "window_cost": window_cost, "window_allowance": _float(raw[5]),
            "credit": _float(raw[2]), "scores": int(raw[6]),
            "remote_calls_last_minute": sum(c for c, r in zip(calls, self.remote, strict=True) if r),
            "arms": per_arm, "store": "redis",
        }  # fmt: skip

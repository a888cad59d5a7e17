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
A request the model sends to the cloud but a cap refuses goes to the edge with reason "budget".
Forced, private and fallback requests are counted like the others (never refused).

State lives in a `BudgetStore`. Every write that must not interleave with another replica is one
store call (`commit`: push the score, check the caps, append the decision, move the credit), so a
Redis store can run it as one Lua script; the reads α is computed from may be slightly stale.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from gateway.schemas import Reason

Backend = Literal["edge", "cloud"]
BACKENDS: tuple[str, ...] = get_args(Backend)
REASONS: tuple[str, ...] = get_args(Reason)
COST_CAP_PERIOD_S = 60.0
_MICRO = 1_000_000  # ρ allowances are summed as integer millionths, so window sums never drift
log = logging.getLogger("routet2i.budget")


class BudgetStateError(ValueError):
    """A budget state file that cannot be read; the message names the file and how to fix it."""


def validate_rho(rho: Any) -> float:
    """ρ as a float in [0, 1], or ValueError saying what ρ is."""
    if isinstance(rho, bool) or not isinstance(rho, int | float) or not 0.0 <= float(rho) <= 1.0:
        raise ValueError(
            f"rho must be a number in [0, 1] (the share of requests that may go to the cloud), got {rho!r}"
        )
    return float(rho)


def validate_cost_cap(cap: Any) -> int | None:
    """The cost cap as a whole number of cloud calls per minute ≥ 1, or None for no cap."""
    if cap is None:
        return None
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ValueError(f"cost_cap must be a whole number of cloud calls per minute (>= 1) or null, got {cap!r}")
    return cap


def _check_choice(backend: str, reason: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if reason not in REASONS:
        raise ValueError(f"reason must be one of {REASONS}, got {reason!r}")


@dataclass(frozen=True)
class BudgetSettings:
    rho: float
    cost_cap: int | None


@dataclass(frozen=True)
class WindowState:
    """What α and the snapshot are computed from: settings plus window counts at one instant."""

    rho: float
    cost_cap: int | None
    scores: int  # scores in the score window
    decisions: int  # requests in the decision window
    cloud: int  # of which served by the cloud
    allowance: float  # Σ ρᵢ over the requests in the decision window
    cloud_last_minute: int  # cloud calls in the last COST_CAP_PERIOD_S seconds
    credit: float  # Σ (ρᵢ − [served by the cloud]) over all requests, clipped

    @property
    def cloud_fraction(self) -> float | None:
        return self.cloud / self.decisions if self.decisions else None

    def cloud_limit(self, decision_window: int) -> int:
        """Most cloud calls a window of `decision_window` requests may hold: ⌊Σ ρᵢ⌋, where the slots
        not yet filled (the next request among them) count at the current ρ, so a cold start is not starved."""
        allowance = self.allowance + max(decision_window - self.decisions, 0) * self.rho
        return math.floor(allowance + 1e-6)


@dataclass(frozen=True)
class StoreStatus:
    """Which store holds the budget and whether it is the one the settings name (for metrics and logs)."""

    kind: str  # "memory" | "redis"
    shared: bool  # the budget is shared with other replicas right now
    up: bool  # the configured store answers (False: a Redis replica serving on its local fallback)
    failovers: int = 0  # times this replica fell back to its local store


@dataclass(frozen=True)
class Committed:
    ticket: int
    backend: str
    reason: str


@dataclass(frozen=True)
class WindowPolicy:
    """The controller's window sizes and credit rule, passed to every store write."""

    score_window: int
    decision_window: int
    credit_limit: float  # |credit| ≤ this many cloud calls (bounds wind-up while a cap binds)
    credit_margin: float  # the credit aims at a cloud share of ρ − margin

    def credit_rate(self, rho: float) -> float:
        return max(0.0, rho - self.credit_margin)


class BudgetStore(Protocol):
    """Budget state shared by the replicas that serve one budget.

    The `WindowPolicy` is passed per call (window sizes and credit rule are controller policy); a
    store trims to it. `commit` and `amend` must each be atomic; `state` and `score_quantile` are reads.
    """

    def settings(self) -> BudgetSettings: ...

    def set_rho(self, rho: float) -> None: ...

    def set_cost_cap(self, cost_cap: int | None) -> None: ...

    def state(self, now: float) -> WindowState: ...

    def score_quantile(self, level: float) -> float | None:
        """The level-quantile (linear interpolation) of the score window; None while it is empty."""
        ...

    def commit(
        self,
        *,
        backend: str,
        reason: str,
        prs: float | None,
        now: float,
        policy: WindowPolicy,
        enforce_caps: bool,
    ) -> Committed:
        """Atomically: push `prs` (if any) into the score window; if `enforce_caps` and the entry is a
        cloud call over the window cap (`WindowState.cloud_limit`) or the cost cap, make it
        (edge, "budget"); append it with the current ρ as its allowance; add
        `policy.credit_rate(ρ)` − [cloud] to the credit, clipped to ±credit_limit; return what was kept."""
        ...

    def amend(self, ticket: int, *, backend: str, reason: str, now: float, policy: WindowPolicy) -> bool:
        """Atomically replace what a committed request turned out to be (e.g. a cloud failure served by
        the edge: ("edge", "fallback")), credit included. False when the ticket has left every window."""
        ...

    def status(self) -> StoreStatus: ...


@dataclass
class _Entry:
    ticket: int
    backend: str
    reason: str
    allowance: int  # ρ in force when it came, in millionths


class InMemoryBudgetStore:
    """One-process store (thread-safe; every call is short and never awaits, so it is async-safe too).

    With `state_path`, ρ and the cost cap are written there atomically on every change and read back
    at start: a file that exists wins over the `rho`/`cost_cap` arguments, so an admin change survives
    restarts. The file is also re-read whenever it changes, so the workers of one host (`uvicorn
    --workers N`, each with its own store) all follow an admin change made through any of them. The
    windows themselves are not persisted (they refill within minutes).
    """

    def __init__(self, rho: float = 0.3, *, cost_cap: int | None = None, state_path: str | Path | None = None):
        self._lock = threading.RLock()
        self._path = Path(state_path) if state_path is not None else None
        self._rho = validate_rho(rho)
        self._cost_cap = validate_cost_cap(cost_cap)
        self._stamp: tuple[int, int] | None = None  # (mtime ns, size) of the state file last read or written
        if self._path is not None and self._path.exists():
            self._rho, self._cost_cap = self._read_state(self._path)
            self._stamp = self._file_stamp()
        self._scores: deque[float] = deque()
        self._sorted: list[float] = []
        self._decisions: deque[_Entry] = deque()
        self._by_ticket: dict[int, _Entry] = {}
        self._cloud = 0
        self._allowance = 0  # millionths
        self._cloud_times: deque[tuple[float, int]] = deque()  # (time, ticket) of cloud calls, oldest first
        self._credit = 0.0
        self._next_ticket = 1

    # ------------------------------------------------------------ settings and persistence

    @staticmethod
    def _read_state(path: Path) -> tuple[float, int | None]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BudgetStateError(f"{path}: not a readable JSON budget state ({exc}); fix it or delete it") from exc
        if not isinstance(data, dict) or "rho" not in data:
            raise BudgetStateError(
                f'{path}: expected an object like {{"rho": 0.3, "cost_cap": null}}; fix or delete it'
            )
        try:
            return validate_rho(data["rho"]), validate_cost_cap(data.get("cost_cap"))
        except ValueError as exc:
            raise BudgetStateError(f"{path}: {exc}; fix the file or delete it") from exc

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self._path.stat() if self._path is not None else None
        except OSError:
            return None
        return None if st is None else (st.st_mtime_ns, st.st_size)

    def _follow_file(self) -> None:
        """Adopt a state file another process wrote (an admin change through another worker)."""
        if self._path is None:
            return
        stamp = self._file_stamp()
        if stamp is None or stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._rho, self._cost_cap = self._read_state(self._path)
        except BudgetStateError as exc:  # keep serving on the values in force; the next good write wins
            log.warning("budget state file changed but cannot be read, keeping rho=%.3f: %s", self._rho, exc)

    def _write_state(self) -> None:
        if self._path is None:
            return
        payload = {"rho": self._rho, "cost_cap": self._cost_cap, "updated_at": time.time()}
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self._path.name + ".", suffix=".tmp", dir=self._path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(payload, fh)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._stamp = self._file_stamp()

    def settings(self) -> BudgetSettings:
        with self._lock:
            self._follow_file()
            return BudgetSettings(self._rho, self._cost_cap)

    def status(self) -> StoreStatus:
        return StoreStatus(kind="memory", shared=False, up=True)

    def set_rho(self, rho: float) -> None:
        rho = validate_rho(rho)
        with self._lock:
            old, self._rho = self._rho, rho
            try:
                self._write_state()
            except BaseException:
                self._rho = old
                raise

    def set_cost_cap(self, cost_cap: int | None) -> None:
        cost_cap = validate_cost_cap(cost_cap)
        with self._lock:
            old, self._cost_cap = self._cost_cap, cost_cap
            try:
                self._write_state()
            except BaseException:
                self._cost_cap = old
                raise

    # ------------------------------------------------------------ windows

    def _expire_cloud_times(self, now: float) -> None:
        while self._cloud_times and self._cloud_times[0][0] <= now - COST_CAP_PERIOD_S:
            self._cloud_times.popleft()

    def _push_score(self, prs: float, score_window: int) -> None:
        self._scores.append(prs)
        bisect.insort(self._sorted, prs)
        while len(self._scores) > score_window:
            old = self._scores.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]

    def _trim_decisions(self, keep: int) -> None:
        while len(self._decisions) > keep:
            old = self._decisions.popleft()
            del self._by_ticket[old.ticket]
            self._cloud -= old.backend == "cloud"
            self._allowance -= old.allowance

    def _add_credit(self, amount: float, limit: float) -> None:
        self._credit = min(limit, max(-limit, self._credit + amount))

    def _state(self, now: float) -> WindowState:
        self._follow_file()
        self._expire_cloud_times(now)
        return WindowState(
            rho=self._rho,
            cost_cap=self._cost_cap,
            scores=len(self._scores),
            decisions=len(self._decisions),
            cloud=self._cloud,
            allowance=self._allowance / _MICRO,
            cloud_last_minute=len(self._cloud_times),
            credit=self._credit,
        )

    def state(self, now: float) -> WindowState:
        with self._lock:
            return self._state(now)

    def score_quantile(self, level: float) -> float | None:
        with self._lock:
            n = len(self._sorted)
            if n == 0:
                return None
            pos = min(max(level, 0.0), 1.0) * (n - 1)
            lo = int(pos)
            hi = min(lo + 1, n - 1)
            return self._sorted[lo] + (pos - lo) * (self._sorted[hi] - self._sorted[lo])

    def commit(
        self,
        *,
        backend: str,
        reason: str,
        prs: float | None,
        now: float,
        policy: WindowPolicy,
        enforce_caps: bool,
    ) -> Committed:
        _check_choice(backend, reason)
        with self._lock:
            if prs is not None:
                self._push_score(prs, policy.score_window)
            self._trim_decisions(policy.decision_window - 1)  # room for this one
            state = self._state(now)
            if backend == "cloud" and enforce_caps:
                over_window = state.cloud + 1 > state.cloud_limit(policy.decision_window)
                over_minute = state.cost_cap is not None and state.cloud_last_minute + 1 > state.cost_cap
                if over_window or over_minute:
                    backend, reason = "edge", "budget"
            entry = _Entry(self._next_ticket, backend, reason, round(self._rho * _MICRO))
            self._next_ticket += 1
            self._decisions.append(entry)
            self._by_ticket[entry.ticket] = entry
            self._allowance += entry.allowance
            if backend == "cloud":
                self._cloud += 1
                self._cloud_times.append((now, entry.ticket))
            self._add_credit(policy.credit_rate(self._rho) - (backend == "cloud"), policy.credit_limit)
            return Committed(entry.ticket, backend, reason)

    def amend(self, ticket: int, *, backend: str, reason: str, now: float, policy: WindowPolicy) -> bool:
        _check_choice(backend, reason)
        with self._lock:
            self._expire_cloud_times(now)
            entry = self._by_ticket.get(ticket)
            timed = next((i for i, (_, t) in enumerate(self._cloud_times) if t == ticket), None)
            if entry is None and timed is None:
                return False
            was_cloud = entry.backend == "cloud" if entry is not None else True
            self._add_credit(was_cloud - (backend == "cloud"), policy.credit_limit)
            if entry is not None:
                self._cloud += (backend == "cloud") - was_cloud
                entry.backend, entry.reason = backend, reason
            if was_cloud and backend != "cloud" and timed is not None:
                del self._cloud_times[timed]
            elif not was_cloud and backend == "cloud":
                self._cloud_times.append((now, ticket))
            return True


@dataclass(frozen=True)
class Decision:
    cloud: bool
    alpha: float
    rho: float
    reason: Literal["model", "budget"]
    ticket: int  # pass to `BudgetController.record` if the request ends up served otherwise

    @property
    def backend(self) -> Backend:
        return "cloud" if self.cloud else "edge"


class BudgetController:
    """α on target from live traffic, with hard caps. One instance per process; state in the store.

    Use: `d = controller.decide(prs)` for a request the router decides (the decision is counted at
    once, so concurrent requests cannot overspend), then `controller.record(backend, reason,
    ticket=d.ticket)` only if it was served otherwise (cloud failed → ("edge", "fallback")).
    Requests routed without `decide` (forced, private) are counted with `record(backend, reason,
    prs=...)`, no ticket; they are never refused, they only lower what the model may send later.
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
        owed = self.feedback_gain * state.credit / self.decision_window
        correction = max(-self.max_correction, min(self.max_correction, owed))
        quantile = self.store.score_quantile(min(1.0, max(0.0, rho + correction)))
        return min(self.alpha_cap, quantile if quantile is not None else rho)

    def alpha(self) -> float:
        """The α the next request would be compared with."""
        return self._alpha(self.store.state(self.clock()))

    @property
    def rho(self) -> float:
        return self.store.settings().rho

    # ------------------------------------------------------------ decisions

    def _commit(self, backend: str, reason: str, prs: float | None, now: float, enforce_caps: bool) -> Committed:
        return self.store.commit(
            backend=backend,
            reason=reason,
            prs=prs,
            now=now,
            policy=self.policy,
            enforce_caps=enforce_caps,
        )

    def decide(self, prs: float) -> Decision:
        """Edge or cloud for a request the router scored `prs` (PRŜ: > ½ means the edge wins)."""
        prs = _finite(prs)
        now = self.clock()
        state = self.store.state(now)
        alpha = self._alpha(state)
        committed = self._commit("cloud" if prs < alpha else "edge", "model", prs, now, enforce_caps=True)
        reason: Literal["model", "budget"] = "budget" if committed.reason == "budget" else "model"
        return Decision(committed.backend == "cloud", alpha, state.rho, reason, committed.ticket)

    def record(self, backend: str, reason: str, *, ticket: int | None = None, prs: float | None = None) -> bool:
        """Count what actually served a request: with the `ticket` of its decision, replace that decision
        (False if it has left every window); without, count a request that bypassed `decide` (its `prs`,
        if scored, joins the score window)."""
        _check_choice(backend, reason)
        now = self.clock()
        if ticket is not None:
            return self.store.amend(ticket, backend=backend, reason=reason, now=now, policy=self.policy)
        self._commit(backend, reason, None if prs is None else _finite(prs), now, enforce_caps=False)
        return True

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


def _finite(prs: Any) -> float:
    if isinstance(prs, bool) or not isinstance(prs, int | float) or not math.isfinite(prs):
        raise ValueError(f"prs must be a finite number, got {prs!r}")
    return float(prs)

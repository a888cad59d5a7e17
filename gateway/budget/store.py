"""The budget store protocol and the values that cross it: settings, window state, the one routing decision.

Every budget type the rest of the gateway sees is defined here; `schemas.py` imports `Backend` and
`Reason` from this module (never the other way round).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from gateway.budget.rules import window_cloud_limit

Backend = Literal["edge", "cloud"]
Reason = Literal["model", "budget", "forced", "private", "fallback", "cache", "escalated"]
BACKENDS: tuple[str, ...] = get_args(Backend)
REASONS: tuple[str, ...] = get_args(Reason)
COST_CAP_PERIOD_S = 60.0


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


def validate_choice(backend: str, reason: str) -> None:
    """ValueError unless `backend` is a `Backend` and `reason` a `Reason`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if reason not in REASONS:
        raise ValueError(f"reason must be one of {REASONS}, got {reason!r}")


def validate_prs(prs: Any) -> float:
    """A router score as a finite float, or ValueError."""
    if isinstance(prs, bool) or not isinstance(prs, int | float) or not math.isfinite(prs):
        raise ValueError(f"prs must be a finite number, got {prs!r}")
    return float(prs)


@dataclass(frozen=True)
class BudgetSettings:
    """ρ and the cost cap. The one place both are validated: every store builds one for every change."""

    rho: float
    cost_cap: int | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "rho", validate_rho(self.rho))
        object.__setattr__(self, "cost_cap", validate_cost_cap(self.cost_cap))


@dataclass(frozen=True)
class Decision:
    """One routing outcome: where a request went, why, and what it was decided on.

    The store fills backend, reason, ticket and the ρ its atomic commit enforced; the controller adds prs and
    α; the service replaces it when the request is served otherwise (a cloud failure → ("edge", "fallback")).
    The HTTP `RouteInfo` is this minus the ticket.
    """

    backend: Backend
    reason: Reason
    prs: float | None = None
    alpha: float | None = None
    rho: float | None = None
    ticket: int | None = None  # pass to `BudgetController.record` if the request ends up served otherwise
    # N-arm routing (gateway.arm_serving): the arm by name, what it cost, λ, every arm's predicted quality.
    # Two arms: arm None (the backend is the arm), cost from the edge_cost/cloud_cost settings.
    arm: str | None = None
    cost: float | None = None
    lam: float | None = None
    qualities: tuple[float, ...] | None = None

    @property
    def cloud(self) -> bool:
        return self.backend == "cloud"


@dataclass(frozen=True)
class WindowState:
    """What α and the snapshot are computed from: settings plus window counts at one instant."""

    rho: float
    cost_cap: int | None
    scores: int  # scores in the score window
    decisions: int  # requests in the decision window
    cloud: int  # of which served by the cloud
    allowance_micro: int  # Σ ρᵢ over the requests in the decision window, in millionths
    cloud_last_minute: int  # cloud calls in the last COST_CAP_PERIOD_S seconds
    credit: float  # Σ (ρᵢ − [served by the cloud]) over all requests, clipped

    @property
    def cloud_fraction(self) -> float | None:
        return self.cloud / self.decisions if self.decisions else None

    def cloud_limit(self, decision_window: int) -> int:
        """Most cloud calls a window of `decision_window` requests may hold (`rules.window_cloud_limit`)."""
        return window_cloud_limit(self.allowance_micro, self.decisions, decision_window, self.rho)


@dataclass(frozen=True)
class StoreStatus:
    """Which store holds the budget and whether it is the one the settings name (for metrics and logs)."""

    kind: str  # "memory" | "redis"
    shared: bool  # the budget is shared with other replicas right now
    up: bool  # the configured store answers (False: a Redis replica serving on its local fallback)
    failovers: int = 0  # times this replica fell back to its local store


@dataclass(frozen=True)
class WindowPolicy:
    """The controller's window sizes and credit rule, passed to every store write."""

    score_window: int
    decision_window: int
    credit_limit: float  # |credit| ≤ this many cloud calls (bounds wind-up while a cap binds)
    credit_margin: float  # the credit aims at a cloud share of ρ − margin


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
        window_cap: bool = True,
    ) -> Decision:
        """Atomically: push `prs` (if any) into the score window; if `enforce_caps` and the entry is a
        cloud call the caps refuse (`rules.caps_refuse`; the cost cap only when not `window_cap`), make it
        (edge, "budget"); append it with the
        current ρ as its allowance; move the credit (`rules.credit_earned`, `rules.clipped_credit`);
        return what was kept (backend, reason, ticket) and the ρ this commit enforced (`Decision.rho`)."""
        ...

    def amend(self, ticket: int, *, backend: str, reason: str, now: float, policy: WindowPolicy) -> bool:
        """Atomically replace what a committed request turned out to be (e.g. a cloud failure served by
        the edge: ("edge", "fallback")), credit included. False when the ticket has left every window."""
        ...

    def status(self) -> StoreStatus: ...

"""The budget's arithmetic as pure functions, shared by the in-memory store, the Redis store and the controller.

The Redis store runs the same rules inside its Lua scripts (`lua.RULES`, prepended to every script); each
function below names its Lua mirror, and tests/test_budget_parity.py runs both on the same random inputs
against a real redis-server. Change one, change the other.
"""

from __future__ import annotations

import math

MICRO = 1_000_000  # ρ allowances are summed as integer millionths, so window sums never drift


def window_cloud_limit(allowance_micro: int, decisions: int, decision_window: int, rho: float) -> int:
    """Most cloud calls a window of `decision_window` requests may hold: ⌊Σ ρᵢ⌋, where the slots not yet
    filled (the next request among them) count at the current ρ, so a cold start is not starved.

    Lua mirror: `window_cloud_limit` in lua.RULES."""
    allowance = allowance_micro / MICRO + max(decision_window - decisions, 0) * rho
    return math.floor(allowance + 1e-6)


def caps_refuse(
    *,
    cloud: int,
    allowance_micro: int,
    decisions: int,
    decision_window: int,
    rho: float,
    cloud_last_minute: int,
    cost_cap: int | None,
    window_cap: bool = True,
) -> bool:
    """True when one more cloud call would break the window cap (unless `window_cap` is False) or the cost cap
    (it goes to the edge instead).

    Lua mirror: `caps_refuse` in lua.RULES (a nil `window_cap` there means True)."""
    over_window = window_cap and cloud + 1 > window_cloud_limit(allowance_micro, decisions, decision_window, rho)
    over_minute = cost_cap is not None and cloud_last_minute + 1 > cost_cap
    return over_window or over_minute


def credit_earned(rho: float, margin: float, cloud: bool) -> float:
    """What one request adds to the credit: the even rate ρ − margin, less one if the cloud served it.

    Lua mirror: `credit_earned` in lua.RULES."""
    return max(0.0, rho - margin) - cloud


def clipped_credit(credit: float, amount: float, limit: float) -> float:
    """The credit after adding `amount`, held within ±limit (bounds wind-up while a cap binds).

    Lua mirror: `clipped_credit` in lua.RULES."""
    return min(limit, max(-limit, credit + amount))


def quantile_level(rho: float, credit: float, *, gain: float, window: int, max_correction: float) -> float:
    """The score quantile α is read at: ρ + clip(gain · credit / W, ±max_correction), within [0, 1].
    (Controller only: Redis returns the window's order statistics, never this level.)"""
    correction = max(-max_correction, min(max_correction, gain * credit / window))
    return min(1.0, max(0.0, rho + correction))


def quantile_position(level: float, n: int) -> tuple[int, int, float]:
    """(lo, hi, weight): the level-quantile of n sorted values is v[lo] + weight · (v[hi] − v[lo]).

    Lua mirror: `quantile_position` in lua.RULES (Lua returns lo and hi; the weight is taken here)."""
    pos = min(max(level, 0.0), 1.0) * (n - 1)
    lo = math.floor(pos)
    return lo, min(lo + 1, n - 1), pos - lo


def interpolate(lo_value: float, hi_value: float, weight: float) -> float:
    return lo_value + weight * (hi_value - lo_value)

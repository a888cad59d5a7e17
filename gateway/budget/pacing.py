"""The N-arm rule as pure functions: pick argmax q_a − λ·cost_a, with λ paced so the mean cost holds a budget.

Per request the router predicts a quality q_a for every arm a (`gateway.arm_quality`), and the arm with the
largest q_a − λ·c_a serves it (c_a: its cost per image). λ is the price of one unit of cost in quality: λ = 0
sends everything to the best arm, a large λ to the cheapest. The pacer sets λ live, like the two-arm α:

    target = B · (1 + clip(gain · credit / W, ±max_correction))        (credit: Σ (1 − margin − cost/B), clipped)
    λ      = the smallest λ ≥ 0 whose choices over the recent quality window cost ≤ target on average

The first line is the integral term (a PI pacer on the realised mean cost; credit > 0 while it runs under the
budget, so the target rises); the second is the feed-forward from the window of recent predictions: the same
empirical-quantile idea that makes α robust to drift, in λ's dimension (mean cost is non-increasing in λ, so a
bisection finds it). A hard cap then holds each window of W requests to Σ Bᵢ: an arm that would break it is
refused and the next arm in the ranking is tried (reason "budget"), so the window never runs over the budget
while some arm within the remaining allowance exists.

Everything here is arithmetic on arrays and numbers: no clock, no I/O, no state (gateway.budget.arm_pacer holds it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

EPS = 1e-9


def arm_values(quality: Sequence[float], costs: Sequence[float], lam: float) -> np.ndarray:
    """q_a − λ·c_a for every arm."""
    return np.asarray(quality, dtype=np.float64) - lam * np.asarray(costs, dtype=np.float64)


def ranking(
    quality: Sequence[float], costs: Sequence[float], lam: float, allowed: Sequence[bool] | None = None
) -> list[int]:
    """Arm indices best first by q_a − λ·c_a (ties: the cheaper arm first), only those `allowed`."""
    values = arm_values(quality, costs, lam)
    order = np.lexsort((np.asarray(costs, dtype=np.float64), -values))  # last key primary: value desc, then cost
    return [int(i) for i in order if allowed is None or allowed[i]]


def window_mean_cost(qualities: np.ndarray, costs: Sequence[float], lam: float) -> float:
    """Mean cost per request if the prompts of the window [N, A] were routed at this λ (no caps)."""
    c = np.asarray(costs, dtype=np.float64)
    values = qualities - lam * c[None, :]
    # ties broken towards the cheaper arm, as in `ranking`: subtract a tiny cost-proportional amount
    choice = np.argmax(values - EPS * c[None, :], axis=1)
    return float(c[choice].mean())


def lambda_ceiling(qualities: np.ndarray, costs: Sequence[float]) -> float:
    """A λ at which the cheapest arm wins every prompt of the window."""
    c = np.asarray(costs, dtype=np.float64)
    gaps = np.diff(np.unique(c))
    min_gap = float(gaps.min()) if gaps.size else 1.0
    spread = float(np.ptp(qualities)) if qualities.size else 1.0
    return (spread + 1.0) / max(min_gap, EPS)


def calibrated_lambda(
    qualities: np.ndarray, costs: Sequence[float], target: float, *, hint: float | None = None, rel_tol: float = 1e-3
) -> float:
    """The smallest λ ≥ 0 (to `rel_tol`) whose mean cost over the window [N, A] is ≤ target: bisection, as cost
    falls when λ grows. `hint` (the last λ) starts a bracket around it that widens until it holds the answer.
    Returns 0 when λ = 0 is within the target already, the ceiling when no λ reaches it."""
    if qualities.size == 0 or window_mean_cost(qualities, costs, 0.0) <= target + EPS:
        return 0.0
    ceiling = lambda_ceiling(qualities, costs)
    if window_mean_cost(qualities, costs, ceiling) > target + EPS:
        return ceiling
    lo, hi = 0.0, ceiling
    if hint is not None and 0.0 < hint < ceiling:
        lo, hi = hint, hint  # widen both ends until cost(lo) > target ≥ cost(hi)
        while hi < ceiling and window_mean_cost(qualities, costs, hi) > target + EPS:
            lo, hi = hi, min(ceiling, hi * 1.5)
        while lo > 0.0 and window_mean_cost(qualities, costs, lo) <= target + EPS:
            hi, lo = lo, (lo / 1.5 if lo > 1e-6 else 0.0)
    while hi - lo > rel_tol * hi:
        mid = 0.5 * (lo + hi)
        if window_mean_cost(qualities, costs, mid) <= target + EPS:
            hi = mid
        else:
            lo = mid
    return hi


def target_cost(budget: float, credit: float, *, gain: float, window: int, max_correction: float) -> float:
    """What the window's choices should cost on average: B · (1 + clip(gain · credit / W, ±max_correction))."""
    return budget * (1.0 + max(-max_correction, min(max_correction, gain * credit / window)))


def credit_after(credit: float, *, budget: float, margin: float, cost: float, limit: float) -> float:
    """The credit after one request that cost `cost`, in requests' worth of budget (scale-free): + (1 − margin)
    − cost / B, held within ±limit. A zero budget (only free arms may serve) counts any cost as the limit."""
    spent = cost / budget if budget > 0 else (limit if cost > 0 else 0.0)
    return min(limit, max(-limit, credit + (1.0 - margin) - spent))


def window_allows(window_cost: float, window_allowance: float, cost: float) -> bool:
    """Whether one more request costing `cost` keeps the window's cost within its allowance Σ Bᵢ."""
    return window_cost + cost <= window_allowance + EPS


def rho_to_cost(rho: float, costs: Sequence[float]) -> float:
    """The cost budget ρ names: the cheapest arm's cost + ρ × (dearest − cheapest) (two arms: exactly ρ's mix)."""
    return min(costs) + rho * (max(costs) - min(costs))


def cost_to_rho(budget: float, costs: Sequence[float]) -> float:
    """The inverse of `rho_to_cost`, within [0, 1]."""
    span = max(costs) - min(costs)
    return 1.0 if span <= 0 else min(1.0, max(0.0, (budget - min(costs)) / span))

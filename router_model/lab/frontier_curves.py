"""Quality–cost curves of routing policies over N models, and their margins at matched costs (numpy only).

Every policy sees one test set as matrices over prompts × models: `quality` (true, in the set's own
units), `cost` (realised cost per request), `pred_q` and `pred_c` (what a router knows before it
generates: out-of-fold predicted quality and the expected cost). A curve is a list of (mean cost,
mean quality) points sorted by cost. Policies that sweep a share of prompts use `SHARES`; policies that
sweep a price λ use the quantiles of the per-prompt break-even prices, so the grid fits any cost unit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SHARES = np.linspace(0.0, 1.0, 101)
N_LAMBDAS = 160

Curve = np.ndarray  # [points, 2]: (cost, quality), sorted by cost


def _sorted(points: np.ndarray) -> Curve:
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return points[np.lexsort((points[:, 1], points[:, 0]))]


def upper_envelope(points: np.ndarray) -> Curve:
    """The points no cheaper-or-equal point beats: quality strictly rising with cost (Pareto front)."""
    pts = _sorted(points)
    keep, best = [], -np.inf
    for i in np.argsort(pts[:, 0] - 1e-12 * pts[:, 1], kind="stable"):
        if pts[i, 1] > best + 1e-12:
            keep.append(i)
            best = pts[i, 1]
    return pts[sorted(keep)]


def single(quality: np.ndarray, cost: np.ndarray, m: int) -> Curve:
    return np.array([[cost[:, m].mean(), quality[:, m].mean()]])


def mix(quality: np.ndarray, cost: np.ndarray, a: int, b: int, shares: np.ndarray = SHARES) -> Curve:
    """Random mix: a share s of requests (uniformly at random) to b, the rest to a; the expectation."""
    qa, qb, ca, cb = quality[:, a].mean(), quality[:, b].mean(), cost[:, a].mean(), cost[:, b].mean()
    return _sorted(np.c_[(1 - shares) * ca + shares * cb, (1 - shares) * qa + shares * qb])


def ranked_split(
    score: np.ndarray, quality: np.ndarray, cost: np.ndarray, a: int, b: int, shares: np.ndarray = SHARES
) -> Curve:
    """The prompts with the highest `score` go to b (a share s of them), the rest to a; swept over s."""
    return _sorted(np.c_[split_points(score, quality, cost, a, b, shares)])


def split_points(
    score: np.ndarray, quality: np.ndarray, cost: np.ndarray, a: int, b: int, shares: np.ndarray = SHARES
) -> tuple[np.ndarray, np.ndarray]:
    """`ranked_split`'s (mean cost, mean quality) at each share, in the order of `shares`."""
    n = len(score)
    order = np.argsort(-score, kind="stable")
    dq = np.r_[0.0, np.cumsum(quality[order, b] - quality[order, a])]
    dc = np.r_[0.0, np.cumsum(cost[order, b] - cost[order, a])]
    k = np.round(shares * n).astype(int)
    return (cost[:, a].sum() + dc[k]) / n, (quality[:, a].sum() + dq[k]) / n


def cheapest_and_best(quality: np.ndarray, cost: np.ndarray) -> tuple[int, int]:
    """Indices of the cheapest model (by mean cost) and the best (by mean quality; cheaper on a tie)."""
    mc, mq = cost.mean(0), quality.mean(0)
    cheap = int(np.lexsort((-mq, mc))[0])
    best = int(np.lexsort((mc, -mq))[0])
    return cheap, best


def _pairs(mean_cost: np.ndarray) -> list[tuple[int, int]]:
    m = len(mean_cost)
    return [(a, b) for a in range(m) for b in range(m) if a != b and mean_cost[a] < mean_cost[b]]


def two_arm_envelope(quality: np.ndarray, cost: np.ndarray, pred_q: np.ndarray, pred_c: np.ndarray) -> Curve:
    """Optimistic reference: the upper envelope over every pair (cheaper a, dearer b) of the predicted-gap-ranked
    split. The pair at each cost is the one best on the true test qualities, so no operator could deploy it."""
    pts = [ranked_split(pred_q[:, b] - pred_q[:, a], quality, cost, a, b) for a, b in _pairs(pred_c.mean(0))]
    if not pts:
        return upper_envelope(np.vstack([single(quality, cost, j) for j in range(quality.shape[1])]))
    return upper_envelope(np.vstack(pts))


def two_arm_budgets(pred_c: np.ndarray, n: int = 101) -> np.ndarray:
    """The budgets the deployable two-arm router is set to: even and (for positive costs) geometric steps
    from the cheapest model's expected cost to the dearest's."""
    lo, hi = float(pred_c.mean(0).min()), float(pred_c.mean(0).max())
    grid = np.linspace(lo, hi, n)
    return np.unique(np.r_[grid, np.geomspace(lo, hi, n)]) if lo > 0 else grid


def two_arm_choices(
    quality: np.ndarray, cost: np.ndarray, pred_q: np.ndarray, fold: np.ndarray, f: int, budgets: np.ndarray
) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """Fold f's deployable two-arm settings at each budget, chosen on the other folds' prompts only.

    Every (pair, share) of the ranked split (cheaper a, dearer b by mean cost on the other folds; the
    predicted gap ranks the prompts, the top share goes to b) is scored on the other folds' prompts with
    their out-of-fold predictions and true qualities; at each budget the best one whose mean cost there
    is within the budget is kept (the cheapest one when none is). Fold f's own labels and costs are never
    read. Those out-of-fold predictions came from models that saw fold f (and their shrinkage slopes were
    fitted with it): the same small leak the shrink-slope fit already accepts.
    Returns (pairs, chosen pair index per budget, chosen share per budget).
    """
    train = fold != f
    q, c, p = quality[train], cost[train], pred_q[train]
    pairs = _pairs(c.mean(0))
    if not pairs:
        raise ValueError("a two-arm router needs two models of different mean cost")
    pts = [split_points(p[:, b] - p[:, a], q, c, a, b) for a, b in pairs]
    cand_c = np.concatenate([pc for pc, _ in pts])
    cand_q = np.concatenate([pq for _, pq in pts])
    order = np.lexsort((-cand_q, cand_c))  # by cost, the better first on a tie
    sq = cand_q[order]
    new_best = sq > np.r_[-np.inf, np.maximum.accumulate(sq)[:-1]]
    best = order[np.maximum.accumulate(np.where(new_best, np.arange(len(sq)), 0))]  # best so far, by cost
    at = np.clip(np.searchsorted(cand_c[order], budgets, side="right") - 1, 0, len(order) - 1)
    pick = best[at]
    return pairs, pick // len(SHARES), SHARES[pick % len(SHARES)]


def two_arm(
    quality: np.ndarray, cost: np.ndarray, pred_q: np.ndarray, pred_c: np.ndarray, fold: np.ndarray,
    budgets: np.ndarray | None = None,
) -> Curve:  # fmt: skip
    """The deployable two-arm router: per fold and budget, the pair and share of `two_arm_choices` (chosen on
    the other folds) applied to the fold's own prompts, ranked by their predicted gap; the folds' realised
    (cost, quality) are combined weighted by fold size, one point per budget."""
    budgets = two_arm_budgets(pred_c) if budgets is None else budgets
    total = np.zeros((len(budgets), 2))
    folds = np.unique(fold)
    if len(folds) < 2:
        raise ValueError("the deployable two-arm router needs at least two folds")
    for f in folds:
        pairs, pair, share = two_arm_choices(quality, cost, pred_q, fold, f, budgets)
        te = fold == f
        q, c, p = quality[te], cost[te], pred_q[te]
        for j in np.unique(pair):
            a, b = pairs[j]
            at = pair == j
            pc, pq = split_points(p[:, b] - p[:, a], q, c, a, b, share[at])
            total[at] += te.sum() * np.c_[pc, pq]
    return _sorted(total / len(fold))


def lambdas(q: np.ndarray, c: np.ndarray, n: int = N_LAMBDAS) -> np.ndarray:
    """0, the quantiles of every per-prompt break-even price (Δq/Δc > 0 between two models), and one above all."""
    dq = q[:, :, None] - q[:, None, :]
    dc = c[:, :, None] - c[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        be = dq / dc
    be = be[(dc > 0) & (dq > 0) & np.isfinite(be)]
    if be.size == 0:
        return np.array([0.0])
    return np.unique(np.r_[0.0, np.quantile(be, np.linspace(0, 1, n)), be.max() * 1.01 + 1e-12])


def argmax_policy(score_q: np.ndarray, score_c: np.ndarray, quality: np.ndarray, cost: np.ndarray, lams) -> Curve:
    """For each λ, every prompt to argmax(score_q − λ·score_c) (ties to the cheaper); realised (cost, quality)."""
    n = len(quality)
    tie = -1e-9 * score_c  # a tie in utility goes to the cheaper model
    pts = np.empty((len(lams), 2))
    for i, lam in enumerate(lams):
        pick = np.argmax(score_q - lam * score_c + tie, axis=1)
        pts[i] = cost[np.arange(n), pick].mean(), quality[np.arange(n), pick].mean()
    return _sorted(pts)


def n_arm(quality, cost, pred_q, pred_c) -> Curve:
    return argmax_policy(pred_q, pred_c, quality, cost, lambdas(pred_q, pred_c))


def oracle(quality, cost) -> Curve:
    return upper_envelope(argmax_policy(quality, cost, quality, cost, lambdas(quality, cost)))


def length_policy(tokens: np.ndarray, quality: np.ndarray, cost: np.ndarray) -> Curve:
    """The longest prompts (a share s) to the best model, the rest to the cheapest."""
    cheap, best = cheapest_and_best(quality, cost)
    return ranked_split(np.asarray(tokens, dtype=np.float64), quality, cost, cheap, best)


def all_curves(quality, cost, pred_q, pred_c, tokens, models, fold) -> dict[str, Curve]:
    """Every method's curve on one test set (the JSON's `methods`, in this order); `fold`: each prompt's fold."""
    cheap, best = cheapest_and_best(quality, cost)
    out = {f"single:{m}": single(quality, cost, j) for j, m in enumerate(models)}
    out["random_mix"] = mix(quality, cost, cheap, best)
    out["length_policy"] = length_policy(tokens, quality, cost)
    out["two_arm"] = two_arm(quality, cost, pred_q, pred_c, fold)
    out["two_arm_envelope"] = two_arm_envelope(quality, cost, pred_q, pred_c)
    out["n_arm"] = n_arm(quality, cost, pred_q, pred_c)
    out["oracle"] = oracle(quality, cost)
    return out


# ---------------------------------------------------------------- matched costs


def quality_at(curve: Curve, budgets: np.ndarray) -> np.ndarray:
    """A curve's quality at each budget: linear between points (a mix of two operating points costs the
    mean), the best point's quality beyond its dearest point (spending less is allowed), NaN below its cheapest."""
    env = upper_envelope(curve)
    q = np.interp(budgets, env[:, 0], env[:, 1])
    q[budgets < env[0, 0] - 1e-12] = np.nan
    return q


def budget_grid(a: Curve, b: Curve, n: int = 41) -> np.ndarray:
    lo = max(a[:, 0].min(), b[:, 0].min())
    hi = max(a[:, 0].max(), b[:, 0].max())
    return np.linspace(lo, hi, n) if hi > lo else np.array([lo])


BUDGET_FRACTIONS = (0.05, 0.1, 0.25, 0.5)


def named_budgets(curves: dict[str, Curve]) -> dict[str, float]:
    """Budgets a fraction of the way from the cheapest single model's cost to the best one's."""
    singles = np.vstack([c for n, c in curves.items() if n.startswith("single:")])
    lo, hi = singles[:, 0].min(), singles[np.argmax(singles[:, 1]), 0]
    return {f"{f:g}": float(lo + f * (hi - lo)) for f in BUDGET_FRACTIONS}


def margins(curves: dict[str, Curve], target: str = "n_arm", budgets: dict[str, float] | None = None) -> dict:
    """The issue's margins of `target`: mean and worst over a shared cost grid vs the deployable two-arm router
    and the length policy (and, as extra information, the optimistic two-arm envelope), at each named budget
    (`vs_two_arm@0.1`: a tenth of the way from the cheapest model's cost to the best's), and the worst vs every
    single model at that model's cost (where the target reaches it)."""
    t = curves[target]
    out: dict[str, float] = {}
    others = [o for o in ("two_arm", "length_policy", "two_arm_envelope") if o in curves]
    for label, b in (budgets or named_budgets(curves)).items():
        for other in others:
            d = quality_at(t, np.array([b])) - quality_at(curves[other], np.array([b]))
            out[f"vs_{other}@{label}"] = float(d[0])
    for other in others:
        grid = budget_grid(t, curves[other])
        d = quality_at(t, grid) - quality_at(curves[other], grid)
        d = d[np.isfinite(d)]
        out[f"vs_{other}_mean"] = float(d.mean()) if d.size else float("nan")
        out[f"vs_{other}_min"] = float(d.min()) if d.size else float("nan")
    singles = []
    for name, c in curves.items():
        if name.startswith("single:"):
            d = quality_at(t, c[:, 0])[0] - c[0, 1]
            out[f"vs_{name}"] = float(d)
            if np.isfinite(d):
                singles.append(d)
    out["vs_singles_min"] = float(min(singles)) if singles else float("nan")
    return out


def bootstrap_margins(
    quality, cost, pred_q, pred_c, tokens, models, fold, reps: int = 200, seed: int = 0,
    curves_fn: Callable = all_curves,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """Point estimate and 95% percentile CI of every margin, resampling test prompts with replacement, each
    with its fold (the predictions stay fixed: the CI is over the test sample, not over training)."""
    curves = curves_fn(quality, cost, pred_q, pred_c, tokens, models, fold)
    budgets = named_budgets(curves)
    point = margins(curves, budgets=budgets)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in point}
    n = len(quality)
    for _ in range(reps):
        i = rng.integers(0, n, n)
        m = margins(curves_fn(quality[i], cost[i], pred_q[i], pred_c[i], tokens[i], models, fold[i]), budgets=budgets)
        for k, v in m.items():
            draws[k].append(v)
    out = {}
    for k, v in point.items():
        arr = np.array(draws[k])
        arr = arr[np.isfinite(arr)]
        lo, hi = np.percentile(arr, [2.5, 97.5]) if arr.size else (np.nan, np.nan)
        out[k] = {"estimate": v, "ci_low": float(lo), "ci_high": float(hi)}
    out["budgets"] = budgets
    return out

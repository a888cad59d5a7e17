"""γ, the tower's weight over the cheap-feature prior, chosen per training run on its own validation folds.

Every head scores its validation fold at each γ of the grid once it is trained (`train_loop.fit_single`); the
run then keeps the smallest γ whose mean validation Spearman(PRŜ, PRS) over the members is within one standard
error of the best γ's (the one-standard-error rule). A fixed γ (docs/ROUTER_PRIOR.md chose 0.25 by transfer
across the shared sets) under-used the tower on pairs where it learns a lot (AGIQA-3K k-fold fell from 65 to 43);
a γ picked by the validation maximum alone would over-trust a tower that only fits the training pair. The rule
leans to the prior unless the tower's gain on held-out prompts of the run is clear. No test prompt is read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

RESIDUAL_SCALE_GRID: tuple[float, ...] = (0.0, 0.125, 0.25, 0.5, 1.0)


def choose_residual_scale(summaries: Sequence[dict[str, Any]]) -> tuple[float, dict[str, Any]] | None:
    """(γ, the selection's record) from the heads' `val_spearman_by_residual_scale`; None when no head has one."""
    tables = [s.get("val_spearman_by_residual_scale") for s in summaries]
    tables = [t for t in tables if t]
    if not tables:
        return None
    grid = sorted({float(g) for t in tables for g in t})
    scores = {g: [t[str(g)] for t in tables if t.get(str(g)) is not None] for g in grid}
    means = {g: sum(v) / len(v) for g, v in scores.items() if v}
    if not means:
        return None
    best = max(means, key=lambda g: (means[g], -g))
    best_scores = scores[best]
    spread = _std(best_scores) / math.sqrt(len(best_scores)) if len(best_scores) > 1 else 0.0
    chosen = min(g for g in means if means[g] >= means[best] - spread)
    record = {
        "rule": "smallest γ within one standard error of the best mean validation Spearman",
        "mean_val_spearman": {str(g): round(m, 4) for g, m in means.items()},
        "best": best,
        "standard_error": round(spread, 4),
        "chosen": chosen,
        "heads": len(tables),
    }
    return chosen, record


def _std(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))

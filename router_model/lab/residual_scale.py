"""γ, the tower's weight over the cheap-feature prior, chosen per training run on its own validation folds.

Every head scores its validation fold at each γ of the grid once it is trained (`train_loop.fit_single`); the run
then keeps the smallest γ whose mean validation Spearman(PRŜ, PRS) over the members is within one standard error of
the best γ's (the one-standard-error rule; the error of the paired per-head differences, since every γ is scored on
the same folds and the folds differ more from each other than the γs do). A fixed γ (docs/ROUTER_PRIOR.md chose 0.25
by transfer across the shared sets) under-used the tower on pairs where it learns a lot (AGIQA-3K k-fold fell from
65 to 43); a γ picked by the validation maximum alone would over-trust a tower that only fits the training pair. The
rule leans to the prior unless the tower's gain on held-out prompts of the run is clear. No test prompt is read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

RESIDUAL_SCALE_GRID: tuple[float, ...] = (0.0, 0.125, 0.25, 0.5, 1.0)


def choose_residual_scale(summaries: Sequence[dict[str, Any]]) -> tuple[float, dict[str, Any]] | None:
    """(γ, the selection's record) from the heads' `val_spearman_by_residual_scale`; None when no head has one."""
    tables = [t for t in (s.get("val_spearman_by_residual_scale") for s in summaries) if t]
    grid = sorted({float(g) for t in tables for g in t})
    # a γ counts on the heads where it and every other γ are defined (an undefined Spearman is null, not zero)
    heads = [t for t in tables if all(t.get(str(g)) is not None for g in grid)]
    if not heads:
        grid = [g for g in grid if all(t.get(str(g)) is not None for t in tables)]
        heads = tables if grid else []
    if not heads:
        return None
    means = {g: sum(t[str(g)] for t in heads) / len(heads) for g in grid}
    best = max(grid, key=lambda g: (means[g], -g))
    errors = {g: paired_standard_error([t[str(best)] - t[str(g)] for t in heads]) for g in grid}
    chosen = min(g for g in grid if means[best] - means[g] <= errors[g])
    record = {
        "rule": "smallest γ within one paired standard error of the best mean validation Spearman",
        "mean_val_spearman": {str(g): round(m, 4) for g, m in means.items()},
        "paired_standard_error": {str(g): round(e, 4) for g, e in errors.items()},
        "best": best,
        "chosen": chosen,
        "heads": len(heads),
    }
    return chosen, record


def paired_standard_error(differences: Sequence[float]) -> float:
    """Standard error of the mean of paired differences (0 for a single pair: the maximum decides)."""
    n = len(differences)
    if n < 2:
        return 0.0
    mean = sum(differences) / n
    return math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1) / n)

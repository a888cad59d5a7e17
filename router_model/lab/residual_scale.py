"""γ, the tower's weight over the cheap-feature prior, chosen per training run on its own validation folds.

Every head records its validation logits at each check of its training (`train_loop.fit_single`); once it is
trained, `cross_half_table` scores every γ of the grid on half of its fold at the check the *other* half picked,
so the early stop's choice of epoch (which favours the tower on the fold that made it) does not flatter the tower.
The run then keeps the smallest γ whose mean validation Spearman(PRŜ, PRS) over the members is within one standard
error of the best γ's (the one-standard-error rule; the error of the paired per-head differences, since every γ is
scored on the same folds and the folds differ more from each other than the γs do). A fixed γ (docs/ROUTER_PRIOR.md
chose 0.25 by transfer across the shared sets) under-used the tower on pairs where it learns a lot (AGIQA-3K k-fold
fell from 65 to 43); a γ picked by the validation maximum alone would over-trust a tower that only fits the training
pair. The rule leans to the prior unless the tower's gain on held-out prompts of the run is clear. No test prompt is
read.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from router_model.lab.losses import spearman
from router_model.lab.ratings import prompt_key

RESIDUAL_SCALE_GRID: tuple[float, ...] = (0.0, 0.125, 0.25, 0.5, 1.0)


def validation_halves(prompts: Sequence[str]) -> np.ndarray:
    """0/1 per validation example, by a stable hash of its prompt text (one prompt's examples stay together)."""
    return np.array([zlib.crc32(prompt_key(p).encode()) % 2 for p in prompts], dtype=np.int64)


def cross_half_table(
    prior_logits: np.ndarray,
    full_logits_by_check: Sequence[np.ndarray],
    metric_weights: np.ndarray,
    prs: np.ndarray,
    halves: np.ndarray,
    grid: Sequence[float] = RESIDUAL_SCALE_GRID,
) -> tuple[dict[str, float | None], list[int]]:
    """Validation Spearman(PRŜ, PRS) at every γ, free of the early stop's selection.

    Scored on the fold that also chose the head's best epoch, the tower's value is flattered: that epoch is the
    one where the tower (at full weight) fitted that very fold best, and γ = 0 (the prior alone) has no epoch to
    pick. Here each half of the fold picks its own best check (Spearman at γ = 1 over the checks'
    `full_logits_by_check`, [n, k] each) and the *other* half scores every γ at that check (logits
    prior + γ · tower, PRŜ = σ(logits) @ weights); the table is the mean of the two halves'. Returns the table
    (None where undefined) and the check each half picked."""
    prior = np.asarray(prior_logits, dtype=np.float64)
    weights, prs, halves = np.asarray(metric_weights, dtype=np.float64), np.asarray(prs), np.asarray(halves)

    def prs_hat(logits: np.ndarray) -> np.ndarray:
        return (1.0 / (1.0 + np.exp(-logits))) @ weights

    tables, picked = [], []
    for half in (0, 1):
        pick, score = halves == half, halves != half
        if pick.sum() < 3 or score.sum() < 3:
            continue
        fits = [spearman(prs_hat(full[pick]), prs[pick]) for full in full_logits_by_check]
        fits = [f if not math.isnan(f) else -math.inf for f in fits]
        check = int(np.argmax(fits))
        picked.append(check)
        tower = np.asarray(full_logits_by_check[check], dtype=np.float64) - prior
        tables.append({g: spearman(prs_hat(prior[score] + g * tower[score]), prs[score]) for g in grid})
    table: dict[str, float | None] = {}
    for g in grid:
        values = [t[g] for t in tables if not math.isnan(t[g])]
        table[str(g)] = sum(values) / len(values) if values else None
    return table, picked


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

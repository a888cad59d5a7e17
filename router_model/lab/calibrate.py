"""Offline calibration of the routing threshold α for a cloud budget ρ (RouteT2I §5.2).

A prompt goes to the cloud iff PRŜ < α. α is the largest threshold that sends at most a ρ share of
the calibration prompts, capped at ½ so that a prompt the router thinks the edge wins never goes to
the cloud, even when budget is left. Concretely α = min(½, s_(⌊ρn⌋)), s sorted ascending (0-based;
s_(n) = +∞): the ρ-quantile taken from the data, so that the realised share never exceeds ρ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ALPHA_CAP = 0.5


def _check_rho(rho: float) -> float:
    rho = float(rho)
    if not 0.0 <= rho <= 1.0 or math.isnan(rho):
        raise ValueError(f"budget ρ must be in [0, 1] (a share of requests), got {rho}")
    return rho


def budget_quantile(prs_scores: np.ndarray, rho: float) -> float:
    """s_(⌊ρn⌋) of the sorted scores (+∞ when ρn = n): at most ⌊ρn⌋ scores lie strictly below it."""
    rho = _check_rho(rho)
    scores = np.sort(np.asarray(prs_scores, dtype=np.float64).ravel())
    if scores.size == 0:
        raise ValueError("no PRS scores to calibrate on: give at least one calibration prompt")
    if not np.all(np.isfinite(scores)):
        raise ValueError("PRS scores contain NaN or infinite values; check the router's output")
    m = int(math.floor(rho * scores.size + 1e-9))
    return float(scores[m]) if m < scores.size else math.inf


def calibrate_alpha(prs_scores: np.ndarray, rho: float) -> float:
    """α = min(½, ρ-quantile of PRŜ): ρ = 0 → the minimum score (nothing is strictly below it, never
    cloud); ρ = 1 → ½ (everything the router thinks the cloud wins)."""
    return float(min(ALPHA_CAP, budget_quantile(prs_scores, rho)))


def cloud_fraction(prs_scores: np.ndarray, alpha: float) -> float:
    """Share of prompts routed to the cloud (PRŜ < α)."""
    scores = np.asarray(prs_scores, dtype=np.float64)
    return float((scores < alpha).mean()) if scores.size else 0.0


def calibrate_checkpoint(
    router_dir: str | Path, prompts: Sequence[str] | str | Path, rho: float, **pair: str
) -> dict[str, Any]:
    """α for a router checkpoint on calibration prompts (a list, or a prompt file `data.read_prompts` reads).

    `pair` (edge_id, cloud_id) picks the pair a many-model checkpoint scores. Returns α, the realised cloud
    fraction on those prompts, and whether the ½ cap bound."""
    from router_model.lab.data import read_prompts
    from router_model.scorers import load_scorer

    rho = _check_rho(rho)
    if isinstance(prompts, str | Path):
        prompts = read_prompts(prompts)
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no calibration prompts: give a prompt file with at least one prompt")
    router_dir = Path(router_dir)
    if not router_dir.is_dir():
        raise FileNotFoundError(f"router checkpoint {router_dir}: no such directory (train one with `routet2i train`)")
    prs = np.asarray(load_scorer(router_dir, **pair).score(prompts).prs, dtype=np.float64)
    alpha = calibrate_alpha(prs, rho)
    return {
        "router": str(router_dir),
        "rho": rho,
        "alpha": alpha,
        "cloud_fraction": cloud_fraction(prs, alpha),
        "capped": budget_quantile(prs, rho) > ALPHA_CAP,
        "n_prompts": len(prompts),
        "prs_quantiles": {f"{q:g}": float(np.quantile(prs, q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)},
    }

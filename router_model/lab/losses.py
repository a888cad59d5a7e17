"""The router's training objective, and the rank correlation its early stopping watches.

The loss has one term per head (D̂_i vs D_i), one on PRŜ vs PRS and a pairwise ranking term on PRŜ,
because the router is used to *rank* prompts (the top-ρ by 1 − PRŜ go to the cloud), so getting the
order right matters more than calibrated values.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation with tie correction; nan when either side is constant."""
    ra, rb = rankdata(a), rankdata(b)
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def pairwise_rank_loss(prs_hat: torch.Tensor, prs: torch.Tensor, margin: float = 0.02) -> torch.Tensor:
    """Logistic loss on every ordered pair whose true PRS differs by more than `margin`, weighted by the gap."""
    gap = prs.unsqueeze(1) - prs.unsqueeze(0)  # [i, j] > 0: i should score above j
    weight = gap.clamp_min(0.0) * (gap > margin)
    if weight.sum() <= 0:
        return prs_hat.sum() * 0.0
    score = torch.logit(prs_hat.clamp(1e-6, 1 - 1e-6))
    loss = F.softplus(-(score.unsqueeze(1) - score.unsqueeze(0)))
    return (loss * weight).sum() / weight.sum()


def router_loss(
    head_logits: torch.Tensor,
    prs_hat: torch.Tensor,
    distances: torch.Tensor,
    prs: torch.Tensor,
    *,
    multi_metric: bool,
    rank_weight: float = 1.0,
) -> torch.Tensor:
    """BCE on every head (multi-metric) + BCE on PRŜ + `rank_weight` × pairwise ranking loss on PRŜ."""
    loss = F.binary_cross_entropy(prs_hat.clamp(1e-6, 1 - 1e-6), prs)
    if multi_metric:
        loss = loss + F.binary_cross_entropy_with_logits(head_logits, distances)
    if rank_weight > 0:
        loss = loss + rank_weight * pairwise_rank_loss(prs_hat, prs)
    return loss

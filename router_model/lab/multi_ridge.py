"""The many-model router's generic gap as a closed-form, dataset-balanced ridge (no gradient training)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from router_model.features import FEATURE_NAMES
from router_model.lab.ratings import RatedPrompt
from router_model.lab.train_multi import PromptInputs, Targets, build_targets
from router_model.multi_router import MultiRouter, MultiRouterConfig


def pair_ridge(x_all: np.ndarray, t: Targets, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, std, coefficients) of the weighted ridge of the training pairs' oriented gaps on standardised
    inputs, with one unpenalised intercept per training pair (like the torch model's pair biases); `alpha`
    is in units of the standardised covariance."""
    x = x_all[t.pair_row]
    mu, sd = x.mean(0), np.maximum(x.std(0), 1e-6)
    xs = (x - mu) / sd
    w = t.pair_w / t.pair_w.sum()
    onehot = np.zeros((len(xs), t.n_pair_bias))
    onehot[np.arange(len(xs)), t.pair_bias] = 1.0
    a = np.concatenate([xs, onehot], 1)
    reg = np.r_[np.full(xs.shape[1], alpha), np.zeros(t.n_pair_bias)]
    coef = np.linalg.solve(a.T @ (a * w[:, None]) + np.diag(reg) + 1e-9 * np.eye(a.shape[1]), a.T @ (w * t.pair_y))
    return mu, sd, coef[: xs.shape[1]]


def fit_ridge(
    sets: dict[str, Sequence[RatedPrompt]],
    inputs: PromptInputs,
    alpha: float = 0.1,
    pairs_mode: str = "all",
    use_embedding: bool = True,
    length_blend: float = 0.0,
    targets: Targets | None = None,
    feature_names: Sequence[str] = FEATURE_NAMES,
) -> MultiRouter:
    """The generic gap as a closed-form weighted ridge, packed into a `MultiRouter` (rank 1, no pair heads).

    Regresses every training pair's oriented gap (dataset-balanced weights, one intercept per pair) on
    the standardised inputs; `alpha` is in units of the standardised covariance.
    """
    t = targets if targets is not None else build_targets(sets, inputs, pairs_mode)
    feats = inputs.features[:, [FEATURE_NAMES.index(n) for n in feature_names]]
    x_all = np.concatenate([feats, inputs.pooled], 1) if use_embedding else feats
    mu, sd, beta = pair_ridge(x_all, t, alpha)
    rows = np.unique(np.r_[t.pair_row, t.cell_row])
    log_tok = np.log1p(inputs.tokens[rows])
    config = MultiRouterConfig(
        models=[],
        feature_names=list(feature_names),
        use_embedding=use_embedding,
        tower="linear",
        rank=1,
        length_blend=length_blend,
        x_mean=mu.tolist(),
        x_std=sd.tolist(),
        log_tokens_mean=float(log_tok.mean()),
        log_tokens_std=float(max(log_tok.std(), 1e-6)),
        data={name: len(items) for name, items in sets.items()},
        head=f"ridge(alpha={alpha:g}, pairs={pairs_mode})",
    )
    model = MultiRouter(config)
    with torch.no_grad():
        model.tower[0].weight.copy_(torch.as_tensor(beta, dtype=torch.float32)[None, :])
        model.tower[0].bias.zero_()
        model.generic.fill_(1.0)
        th = model.theta(torch.as_tensor(x_all[rows], dtype=torch.float32))
        model.theta_cov.fill_(float(th.var()) if len(th) > 1 else 1.0)
    return model.eval()

"""Fitting the router's cheap-feature prior (router_model/prior.py) on training examples: a closed-form ridge.

Target per head i: the logit of the normalised distance D_i = σ((q_edge − q_cloud)/scale_i), i.e. the
scaled quality difference itself, so prior and tower add up in the space the heads' sigmoid reads.
`alpha` is the ridge strength per example on standardised features (alpha · n · I). By default
(`RouterConfig.prior_alpha` None) each training run chooses it from `PRIOR_ALPHA_GRID` by exact leave-one-out
error on its own training prompts (closed form through the SVD: no refits), against a constant (infinite
alpha; a gain within one standard error counts as none). Where the cheap features predict held-out prompts no
better than a constant (AGIQA-3K, SeeTRUE) there
is no prior and the run trains the paper's tower alone (`routet2i evaluate --methods routet2i routet2i_no_prior`
on AGIQA-3K showed a near-constant prior under the zero-initialised tower well behind the tower alone on the
same folds). Where they do predict (GenAI-Bench) the prior is kept; the chosen strength is the checkpoint's
`config.prior.alpha`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from router_model.features import prompt_features
from router_model.lab.data import RoutingExample, quality_arrays
from router_model.lab.residual_scale import paired_standard_error
from router_model.prior import PRIOR_FEATURES, TOKENS, FeaturePrior
from router_model.prs import PRSStats, normalized_distances, prs_from_distances


def prior_inputs(prompts: Sequence[str], token_counts: Sequence[int] | np.ndarray, names: Sequence[str]) -> np.ndarray:
    """[N, F] raw prior features in `names` order (text features, then log1p of the real-token count)."""
    columns = [prompt_features(list(prompts), names=[n for n in names if n != TOKENS]).astype(np.float64)]
    if TOKENS in names:
        columns.append(np.log1p(np.asarray(token_counts, dtype=np.float64))[:, None])
    return np.concatenate(columns, axis=1)


PRIOR_ALPHA_GRID: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0, 1000.0, math.inf)


def leave_one_out_errors(z: np.ndarray, target: np.ndarray, alphas: Sequence[float]) -> dict[float, np.ndarray]:
    """Squared leave-one-out error per example (summed over target columns) of the ridge with an intercept on
    standardised `z`, per alpha (penalty alpha · n · I; infinite: the intercept alone), from one SVD:
    r_i / (1 − h_ii) is the exact leave-one-out residual of a linear smoother."""
    n = len(z)
    centred_z = z - z.mean(axis=0)
    centred_y = target - target.mean(axis=0)
    u, s, _ = np.linalg.svd(centred_z, full_matrices=False)
    projected = u.T @ centred_y  # [r, k]
    errors = {}
    for alpha in alphas:
        shrink = s**2 / (s**2 + alpha * n)
        fitted = u @ (shrink[:, None] * projected)
        leverage = (u**2) @ shrink + 1.0 / n
        residual = (centred_y - fitted) / (1.0 - leverage)[:, None]
        errors[float(alpha)] = (residual**2).sum(axis=1)
    return errors


def choose_prior_alpha(errors: dict[float, np.ndarray]) -> float:
    """The alpha of least mean leave-one-out error (ties: the stronger), unless its gain over the constant
    (infinite alpha) is within one standard error of the paired per-example differences: then infinity."""
    means = {alpha: float(e.mean()) for alpha, e in errors.items()}
    best = min(means, key=lambda a: (means[a], -a))
    if math.isinf(best) or math.inf not in errors:
        return best
    gain = errors[math.inf] - errors[best]
    return best if gain.mean() > paired_standard_error(gain.tolist()) else math.inf


def fit_prior(
    examples: Sequence[RoutingExample],
    token_counts: Sequence[int] | np.ndarray,
    stats: PRSStats,
    alpha: float | None = None,
    names: Sequence[str] = PRIOR_FEATURES,
    multi_metric: bool = True,
) -> FeaturePrior | None:
    """Ridge of each head's distance logit on the standardised features of `examples` (one head on logit(PRS)
    when `multi_metric` is off, as the ablated router has); `alpha` None: chosen by leave-one-out, and None
    (no prior) when a constant predicts held-out prompts at least as well."""
    x = prior_inputs([ex.prompt for ex in examples], token_counts, names)
    q_edge, q_cloud = quality_arrays(examples)
    target = (q_edge - q_cloud) / np.asarray(stats.scale)  # [n, k]: logit of D_i
    if not multi_metric:
        prs = np.clip(prs_from_distances(normalized_distances(q_edge, q_cloud, stats), stats), 1e-4, 1 - 1e-4)
        target = np.log(prs / (1 - prs))[:, None]
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = (x - mean) / scale
    if alpha is None:
        alpha = choose_prior_alpha(leave_one_out_errors(z, target, PRIOR_ALPHA_GRID))
        if math.isinf(alpha):
            return None
    bias = target.mean(axis=0)
    gram = z.T @ z + alpha * len(z) * np.eye(z.shape[1])
    # lstsq: with alpha 0 a constant or repeated feature column makes the gram singular (minimum-norm fit then)
    weight = np.linalg.lstsq(gram, z.T @ (target - bias), rcond=None)[0].T  # [k, F]
    return FeaturePrior(
        features=list(names),
        mean=mean.tolist(),
        scale=scale.tolist(),
        weight=weight.tolist(),
        bias=bias.tolist(),
        alpha=float(alpha),
    )

"""The frontier's ridge predictor: per model, quality ≈ cheap-feature ridge + γ · embedding-ridge residual.

Per model m of the test set, on its training-fold prompts only:

    q̂_m(p) = b_m + w_mᵀ z_cheap(p) + γ · v_mᵀ z_emb(p)

with z_cheap the standardised spaCy-free features plus log token count, w_m the ridge with penalty
α·n·I, v_m the ridge (penalty α_e·n·I) of the cheap ridge's training residual on the standardised
pooled embedding, and b_m the unpenalised intercept. (α, α_e, γ) are shared by the set's models and
chosen by inner k-fold cross-validation over the training prompts (pooled squared error over models);
the test fold never enters. `choose_predictor` decides ridge vs the IRT model on one more inner
hold-out of the training prompts, by a rule fixed in advance (see its docstring).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from router_model.features import FEATURE_NAMES
from router_model.lab.ratings import RatedPrompt

ALPHAS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
EMB_ALPHAS = (0.1, 0.3, 1.0, 3.0)
GAMMAS = (0.0, 0.25, 0.5, 0.75, 1.0)
INNER_FOLDS = 5


@dataclass
class RidgeChoice:
    alpha: float
    emb_alpha: float
    gamma: float
    inner_mse: float


def design(features: np.ndarray, tokens: np.ndarray, pooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cheap [N, F], embedding [N, E]): the features without `log_nouns` plus log1p(tokens); the pooled states."""
    if features.shape[1] == len(FEATURE_NAMES):
        features = features[:, [i for i, n in enumerate(FEATURE_NAMES) if n != "log_nouns"]]
    cheap = np.concatenate([features, np.log1p(tokens.astype(np.float64))[:, None]], 1).astype(np.float64)
    return cheap, pooled.astype(np.float64)


def targets(
    items: Sequence[RatedPrompt], models: Sequence[str], dims: Sequence[str]
) -> list[tuple[list[int], np.ndarray]]:
    """Per model: (indices into `items` rated on every dim, their mean score over `dims`)."""
    out = []
    for m in models:
        idx = [i for i, it in enumerate(items) if m in it.scores and all(d in it.scores[m] for d in dims)]
        out.append((idx, np.array([np.mean([items[i].scores[m][d] for d in dims]) for i in idx])))
    return out


class _Ridge:
    """Ridge on standardised columns with an unpenalised intercept, all penalties from one eigendecomposition."""

    def __init__(self, x: np.ndarray) -> None:
        self.mu, self.sd = x.mean(0), np.maximum(x.std(0), 1e-6)
        xs = (x - self.mu) / self.sd
        self.n = len(x)
        self.xs = xs
        self.evals, self.evecs = np.linalg.eigh(xs.T @ xs) if xs.shape[1] else (np.zeros(0), np.zeros((0, 0)))

    def fit(self, y: np.ndarray, alpha: float) -> tuple[float, np.ndarray]:
        b = float(y.mean())
        rhs = self.evecs.T @ (self.xs.T @ (y - b))
        return b, self.evecs @ (rhs / (self.evals + alpha * self.n))

    def predict(self, x: np.ndarray, coef: tuple[float, np.ndarray]) -> np.ndarray:
        return coef[0] + ((x - self.mu) / self.sd) @ coef[1]


def _fit_predict_grid(
    cheap: np.ndarray, emb: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray
) -> dict[tuple[float, float, float], np.ndarray]:
    """Predictions on rows `te` for every (α, α_e, γ) of the grid, fitted on rows `tr`."""
    rc = _Ridge(cheap[tr])
    re = _Ridge(emb[tr]) if emb.shape[1] else None
    out = {}
    for a in ALPHAS:
        coef = rc.fit(y, a)
        base_te = rc.predict(cheap[te], coef)
        if re is None:
            for g in GAMMAS:
                out[(a, EMB_ALPHAS[0], g)] = base_te
            continue
        resid = y - rc.predict(cheap[tr], coef)
        for ae in EMB_ALPHAS:
            r_te = re.predict(emb[te], re.fit(resid, ae))
            for g in GAMMAS:
                out[(a, ae, g)] = base_te + g * r_te
    return out


def key_folds(keys: Sequence[str], k: int, seed: int) -> dict[str, int]:
    uniq = sorted(set(keys))
    random.Random(seed).shuffle(uniq)
    return {key: j % k for j, key in enumerate(uniq)}


def select(
    items: Sequence[RatedPrompt], models: Sequence[str], dims: Sequence[str], cheap: np.ndarray, emb: np.ndarray,
    row: Callable[[RatedPrompt], int], seed: int = 0,
) -> RidgeChoice:  # fmt: skip
    """(α, α_e, γ) with the least pooled squared error over INNER_FOLDS folds (by prompt) of `items` only."""
    folds = key_folds([it.key for it in items], INNER_FOLDS, seed + 1)
    sse: dict[tuple[float, float, float], float] = {}
    count = 0
    for idx, y in targets(items, models, dims):
        rows = np.array([row(items[i]) for i in idx], dtype=np.int64)
        g = np.array([folds[items[i].key] for i in idx])
        for f in range(INNER_FOLDS):
            tr, te = g != f, g == f
            if tr.sum() < 3 or not te.any():
                continue
            preds = _fit_predict_grid(cheap, emb, y[tr], rows[tr], rows[te])
            for k, p in preds.items():
                sse[k] = sse.get(k, 0.0) + float(((p - y[te]) ** 2).sum())
            count += int(te.sum())
    if not sse:
        return RidgeChoice(ALPHAS[-1], EMB_ALPHAS[-1], 0.0, float("nan"))
    best = min(sse, key=lambda k: (sse[k], -k[0], k[2]))  # ties: more shrinkage, smaller γ
    return RidgeChoice(best[0], best[1], best[2], sse[best] / max(count, 1))


def fit_predict(
    items: Sequence[RatedPrompt], models: Sequence[str], dims: Sequence[str], cheap: np.ndarray, emb: np.ndarray,
    row: Callable[[RatedPrompt], int], rows: np.ndarray, seed: int = 0,
) -> tuple[np.ndarray, RidgeChoice]:  # fmt: skip
    """Predicted quality [len(rows), models] from ridges fitted on `items` with inner-CV-chosen (α, α_e, γ)."""
    choice = select(items, models, dims, cheap, emb, row, seed)
    out = np.zeros((len(rows), len(models)))
    for j, (idx, y) in enumerate(targets(items, models, dims)):
        tr = np.array([row(items[i]) for i in idx], dtype=np.int64)
        if len(tr) < 3:
            out[:, j] = y.mean() if len(y) else 0.0
            continue
        rc = _Ridge(cheap[tr])
        coef = rc.fit(y, choice.alpha)
        out[:, j] = rc.predict(cheap[rows], coef)
        if emb.shape[1] and choice.gamma > 0:
            re = _Ridge(emb[tr])
            resid = y - rc.predict(cheap[tr], coef)
            out[:, j] += choice.gamma * re.predict(emb[rows], re.fit(resid, choice.emb_alpha))
    return out, choice


def shrunk_mse(pred: np.ndarray, truth: np.ndarray, mu: np.ndarray) -> float:
    """Squared error after the least-squares slope (clipped to [0, 1]) of true on predicted deviation from `mu`:
    the shrinkage `frontier.shrink` applies, granted to every candidate alike."""
    x, y = pred - mu, truth - mu
    beta = float(np.clip((x * y).sum() / max((x * x).sum(), 1e-12), 0.0, 1.0))
    return float(((mu + beta * x - truth) ** 2).mean())

"""ΔP arithmetic: routing order, ΔP curves over the cloud budget ρ, cloud-call reduction, AUC, paired bootstrap.

For a budget ρ a method sends its top ⌊ρn⌋ prompts by `cloud_advantage` to the cloud (ties broken by
a hash of the prompt text, so neither file order nor the method decides them) and

    ΔP(ρ) = mean_i (Q_route,i − Q_edge,i) / (Q_cloud,i − Q_edge,i) × 100,

Q_x,i the mean of metric i over the evaluated prompts: the share of the cloud model's gain recovered.
Random ≈ 100ρ; the oracle can exceed 100.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TARGETS = (40, 50, 60, 80)


def rho_grid(step: float = 0.05) -> np.ndarray:
    """0, step, …, 1 (rounded so that the keys format cleanly)."""
    n = int(round(1.0 / step))
    return np.round(np.linspace(0.0, 1.0, n + 1), 10)


def rho_key(rho: float) -> str:
    return f"{float(rho):g}"


# ---------------------------------------------------------------- the arithmetic


def routing_order(scores: np.ndarray, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Indices by descending score; equal scores by ascending `tiebreak` (default: index)."""
    scores = np.asarray(scores, dtype=np.float64)
    if tiebreak is None:
        tiebreak = np.arange(len(scores))
    return np.lexsort((np.asarray(tiebreak), -scores))


def n_cloud(rho: float, n: int) -> int:
    """Prompts sent to the cloud at budget ρ: ⌊ρn⌋ (never over budget)."""
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"budget ρ must be in [0, 1], got {rho}")
    return int(np.floor(rho * n + 1e-9))


def delta_p_curve(
    scores: np.ndarray,
    q_edge: np.ndarray,
    q_cloud: np.ndarray,
    rhos: Sequence[float],
    tiebreak: np.ndarray | None = None,
) -> np.ndarray:
    """ΔP(ρ) in percent for every ρ; q arrays are [n, k]. Metrics with no cloud−edge gap are left out."""
    q_edge, q_cloud = np.atleast_2d(q_edge).astype(np.float64), np.atleast_2d(q_cloud).astype(np.float64)
    if len(scores) != len(q_edge):
        raise ValueError(f"{len(scores)} scores for {len(q_edge)} prompts")
    gain = q_cloud - q_edge
    total = gain.sum(axis=0)
    usable = np.abs(total) > 1e-12 * max(1.0, float(np.abs(gain).sum()))
    if not usable.any():
        raise ValueError("edge and cloud have the same mean quality on every metric here: ΔP is undefined")
    cum = np.vstack([np.zeros(gain.shape[1]), np.cumsum(gain[routing_order(scores, tiebreak)], axis=0)])
    counts = [n_cloud(r, len(gain)) for r in rhos]
    return (cum[counts][:, usable] / total[usable]).mean(axis=1) * 100.0


def route_quality(
    scores: np.ndarray, q_edge: np.ndarray, q_cloud: np.ndarray, rho: float, tiebreak: np.ndarray | None = None
) -> np.ndarray:
    """Q_route per metric at budget ρ (mean over prompts of the served model's quality)."""
    q_edge, q_cloud = np.atleast_2d(q_edge), np.atleast_2d(q_cloud)
    cloud = np.zeros(len(q_edge), dtype=bool)
    cloud[routing_order(scores, tiebreak)[: n_cloud(rho, len(q_edge))]] = True
    return np.where(cloud[:, None], q_cloud, q_edge).mean(axis=0)


def cloud_call_reduction(delta_p: Sequence[float], rhos: Sequence[float], target: float) -> float:
    """1 − min{ρ : ΔP(ρ) ≥ target}, in percent; NaN when the curve never reaches the target."""
    for rho, value in zip(rhos, delta_p, strict=True):
        if value >= target - 1e-9:
            return (1.0 - float(rho)) * 100.0
    return float("nan")


def curve_auc(delta_p: Sequence[float], rhos: Sequence[float]) -> float:
    """Trapezoid area under ΔP(ρ) over ρ ∈ [0, 1] (percent · unit: random ≈ 50)."""
    y, x = np.asarray(delta_p, dtype=np.float64), np.asarray(rhos, dtype=np.float64)
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)


def paired_bootstrap(
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    q_edge: np.ndarray,
    q_cloud: np.ndarray,
    rhos: np.ndarray,
    tiebreak: np.ndarray | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """A − B on ΔP(0.5) and AUC over prompt resamples (the same resample for both methods)."""
    rng = np.random.default_rng(seed)
    n = len(scores_a)
    tiebreak = np.arange(n) if tiebreak is None else np.asarray(tiebreak)
    half = int(np.argmin(np.abs(rhos - 0.5)))
    diffs: dict[str, list[float]] = {"delta_p_0.5": [], "auc": []}
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        qe, qc, tb = q_edge[idx], q_cloud[idx], tiebreak[idx]
        if np.all(np.abs((qc - qe).sum(axis=0)) < 1e-12):
            continue
        ca = delta_p_curve(scores_a[idx], qe, qc, rhos, tb)
        cb = delta_p_curve(scores_b[idx], qe, qc, rhos, tb)
        diffs["delta_p_0.5"].append(ca[half] - cb[half])
        diffs["auc"].append(curve_auc(ca, rhos) - curve_auc(cb, rhos))
    out = {}
    for key, values in diffs.items():
        v = np.asarray(values)
        out[key] = {
            "mean_diff": float(v.mean()),
            "ci_low": float(np.percentile(v, 2.5)),
            "ci_high": float(np.percentile(v, 97.5)),
            "win_share": float((v > 0).mean()),
            "resamples": len(v),
        }
    return out

"""Pareto Relative Superiority (PRS) of the edge image over the cloud image.

    D_i = σ((q_e,i − q_c,i) / (Γ · |μ_i(e) − μ_i(c)|)),    PRS = Σ_i w_i D_i

μ_i(x) is the mean of metric i over model x's images in the *training* split, so the statistics are
fitted once (`fit_prs_stats`) and then stored beside the dataset and inside the router checkpoint:
serving and evaluation must reproduce exactly the labels the router was trained on.
PRS > 0.5: the edge image is better; PRS < 0.5: the cloud image is better.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class PRSStats:
    metrics: list[str]
    mu_edge: list[float]
    mu_cloud: list[float]
    gamma: float = 1.0
    weights: list[float] = field(default_factory=list)
    eps: float = 1e-6

    def __post_init__(self) -> None:
        k = len(self.metrics)
        if not self.weights:
            self.weights = [1.0 / k] * k
        if not (len(self.mu_edge) == len(self.mu_cloud) == len(self.weights) == k):
            raise ValueError(f"PRS statistics need one μ_edge, μ_cloud and weight per metric ({k} metrics)")
        if self.gamma <= 0:
            raise ValueError(f"Γ (gamma) must be > 0, got {self.gamma}")
        total = float(sum(self.weights))
        if total <= 0 or any(w < 0 for w in self.weights):
            raise ValueError(f"PRS weights must be non-negative with a positive sum, got {self.weights}")
        self.weights = [float(w) / total for w in self.weights]

    @property
    def scale(self) -> np.ndarray:
        """Per-metric denominator Γ·|μ_e − μ_c|, guarded by ε."""
        gap = np.abs(np.asarray(self.mu_edge) - np.asarray(self.mu_cloud))
        return self.gamma * np.maximum(gap, self.eps)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PRSStats:
        return cls(**{k: data[k] for k in ("metrics", "mu_edge", "mu_cloud", "gamma", "weights", "eps") if k in data})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> PRSStats:
        return cls.from_dict(json.loads(Path(path).read_text()))


def fit_prs_stats(
    q_edge: np.ndarray,
    q_cloud: np.ndarray,
    metrics: Sequence[str],
    gamma: float = 1.0,
    weights: Sequence[float] | None = None,
    eps: float = 1e-6,
) -> PRSStats:
    """Fit μ per metric and model on (training) quality arrays of shape [n, k]."""
    q_edge, q_cloud = np.atleast_2d(q_edge), np.atleast_2d(q_cloud)
    return PRSStats(
        metrics=list(metrics),
        mu_edge=q_edge.mean(axis=0).tolist(),
        mu_cloud=q_cloud.mean(axis=0).tolist(),
        gamma=gamma,
        weights=list(weights) if weights is not None else [],
        eps=eps,
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def normalized_distances(q_edge: np.ndarray, q_cloud: np.ndarray, stats: PRSStats) -> np.ndarray:
    """D_i for each example and metric, shape [n, k]."""
    diff = np.atleast_2d(np.asarray(q_edge, dtype=np.float64)) - np.atleast_2d(np.asarray(q_cloud, dtype=np.float64))
    return _sigmoid(diff / stats.scale)


def prs_from_distances(distances: np.ndarray, stats: PRSStats) -> np.ndarray:
    return np.atleast_2d(distances) @ np.asarray(stats.weights)


def pareto_relative_superiority(q_edge: np.ndarray, q_cloud: np.ndarray, stats: PRSStats) -> np.ndarray:
    """PRS for each example, shape [n]."""
    return prs_from_distances(normalized_distances(q_edge, q_cloud, stats), stats)

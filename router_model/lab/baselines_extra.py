"""Recommender-style routing baselines: kNN, an MLP, matrix factorisation (RouteLLM's MF) and an IRT-style model.

All four use the same frozen encoder's mean-pooled token states as the baselines of `baselines`, fixed
seeds, and choose their hyperparameters on an inner validation part of the *training* prompts.

Qualities are put on one scale per metric set (one dataset, as far as the examples tell): each metric
is centred and divided by its std pooled over the edge and cloud values, then averaged over metrics.
`knn` and `mlp` learn the cloud − edge gap of that scale. `matrix_factorization` and `irt` learn the
quality of (prompt, model): every example contributes its edge and its cloud model, so several pairs
that share a model teach one model of abilities, and any pair of models seen in training can be scored.
A model never seen in training is scored as the generic edge or cloud model of its role.

Importing this module registers the four in `baselines.ROUTERS` and `baselines.BASELINES`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from router_model.encoder import TokenStates
from router_model.lab.baselines import (
    BASELINES,
    ROUTERS,
    SEEDED,
    BaseRouter,
    _check_states,
    _snapshot,
    _val_split,
    fit_head,
    torch_threads,
)
from router_model.lab.data import RoutingExample
from router_model.model_ids import canonical_id, is_canonical

# The methods that need no training data: reported in every protocol, also with only a checkpoint and a test set.
TRAINING_FREE = ("random", "noun_count", "prompt_length", "oracle")
GENERIC_EDGE, GENERIC_CLOUD = "<edge>", "<cloud>"


def _model_key(name: str) -> str:
    """The canonical id of a model name (`model_ids.canonical_id`), so sets that spell a model differently share it;
    an unknown name is its lower-cased self."""
    found = canonical_id(name)
    return found if is_canonical(found) else name.lower()


def model_qualities(examples: Sequence[RoutingExample]) -> tuple[np.ndarray, np.ndarray]:
    """Per-example edge and cloud quality [n] on one scale per metric set: z-scored per metric, mean over metrics.

    The mean and std of a metric are pooled over the edge and cloud values of the examples with the same
    metric list (the same dataset), so one model's quality is comparable across the pairs it appears in.
    """
    q_e, q_c = np.zeros(len(examples)), np.zeros(len(examples))
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(tuple(ex.metrics), []).append(i)
    for idx in groups.values():
        e = np.array([examples[i].q_edge for i in idx], dtype=np.float64)
        c = np.array([examples[i].q_cloud for i in idx], dtype=np.float64)
        both = np.concatenate([e, c])
        mean, std = both.mean(axis=0), both.std(axis=0)
        std = np.where(std < 1e-12, 1.0, std)
        q_e[idx] = ((e - mean) / std).mean(axis=1)
        q_c[idx] = ((c - mean) / std).mean(axis=1)
    return q_e, q_c


def _embed(examples: Sequence[RoutingExample], states: TokenStates | None, who: str) -> torch.Tensor:
    return _check_states(examples, states, who).mean_pooled().float()


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return -1.0
    return float(spearmanr(a, b).statistic)


# ---------------------------------------------------------------- kNN and MLP on the gap


class KNNRouter(BaseRouter):
    """Distance-weighted mean normalised gap of the k nearest training prompts (cosine geometry).

    k is chosen from `ks` by the Spearman correlation of predicted and true gap on an inner validation
    part of the training prompts; the final index holds every training prompt.
    """

    name = "knn"
    needs_states = True
    ks: ClassVar[tuple[int, ...]] = (1, 2, 4, 8, 16, 32, 64, 128, 256)

    def __init__(self, seed: int = 0, val_fraction: float = 0.2):
        self.seed, self.val_fraction = seed, val_fraction
        self.k: int | None = None
        self.keys: torch.Tensor | None = None
        self.gaps: np.ndarray | None = None

    @staticmethod
    def _predict(keys: torch.Tensor, gaps: np.ndarray, queries: torch.Tensor, k: int) -> np.ndarray:
        k = min(k, len(keys))
        sims = queries @ keys.T
        top, idx = sims.topk(k, dim=1)
        dist = (2.0 - 2.0 * top).clamp_min(0.0).sqrt()
        weights = (1.0 / (dist + 1e-3)).double().numpy()
        return (weights * gaps[idx.numpy()]).sum(axis=1) / weights.sum(axis=1)

    def fit(self, train: Sequence[RoutingExample], train_states: TokenStates | None = None) -> BaseRouter:
        if not train:
            raise ValueError(f"{self.name}: no training examples")
        x = nn.functional.normalize(_embed(train, train_states, self.name), dim=1)
        q_e, q_c = model_qualities(train)
        gaps = q_c - q_e
        tr, val = _val_split(len(train), self.val_fraction, self.seed)
        scores = {k: _spearman(self._predict(x[tr], gaps[tr], x[val], k), gaps[val]) for k in self.ks if k <= len(tr)}
        self.k = max(scores, key=lambda k: (scores[k], -k)) if scores else 1
        self.keys, self.gaps = x, gaps
        return self

    def cloud_advantage(self, examples: Sequence[RoutingExample], states: TokenStates | None = None) -> np.ndarray:
        if self.keys is None or self.gaps is None or self.k is None:
            raise RuntimeError(f"{self.name}: call fit() before cloud_advantage()")
        queries = nn.functional.normalize(_embed(examples, states, self.name), dim=1)
        return self._predict(self.keys, self.gaps, queries, self.k)


class MLPRouter(BaseRouter):
    """A one-hidden-layer MLP regressing the normalised gap, early-stopped (and its weight decay chosen)
    on an inner validation part of the training prompts (`baselines.fit_head` with an MSE loss)."""

    name = "mlp"
    needs_states = True

    def __init__(self, seed: int = 0, hidden: int = 64, val_fraction: float = 0.15):
        self.seed, self.hidden, self.val_fraction = seed, hidden, val_fraction
        self.head: nn.Module | None = None

    def fit(self, train: Sequence[RoutingExample], train_states: TokenStates | None = None) -> BaseRouter:
        if not train:
            raise ValueError(f"{self.name}: no training examples")
        q_e, q_c = model_qualities(train)
        y = torch.as_tensor(q_c - q_e, dtype=torch.float32)
        self.head = fit_head(
            _embed(train, train_states, self.name), y, hidden=self.hidden, val_fraction=self.val_fraction,
            seed=self.seed, loss=nn.functional.mse_loss,
        )  # fmt: skip
        return self

    def cloud_advantage(self, examples: Sequence[RoutingExample], states: TokenStates | None = None) -> np.ndarray:
        if self.head is None:
            raise RuntimeError(f"{self.name}: call fit() before cloud_advantage()")
        with torch.no_grad():
            return self.head(_embed(examples, states, self.name))[:, 0].double().numpy()


# ---------------------------------------------------------------- quality(prompt, model): MF and IRT


class _MFNet(nn.Module):
    """RouteLLM's MF: score(p, m) = w·(v_m ⊙ (W e_p)) + b."""

    def __init__(self, d: int, models: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(d, dim, bias=False)
        self.models = nn.Embedding(models, dim)
        self.out = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, p: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Scores of rows (prompt p, model m); `x` holds each prompt's features once."""
        return self.out(self.models(m) * self.proj(x)[p])[:, 0]

    def penalty(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(())


class _IRTNet(nn.Module):
    """IRT-style: quality(p, m) = b_m + <θ(p), a_m>, θ(p) = A e_p (low dimension, L2 on θ)."""

    def __init__(self, d: int, models: int, dim: int):
        super().__init__()
        self.theta = nn.Linear(d, dim, bias=False)
        self.ability = nn.Embedding(models, dim)
        self.bias = nn.Embedding(models, 1)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, p: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Qualities of rows (prompt p, model m); `x` holds each prompt's features once."""
        return self.bias(m)[:, 0] + (self.theta(x)[p] * self.ability(m)).sum(dim=1)

    def penalty(self, x: torch.Tensor) -> torch.Tensor:
        return 1e-2 * self.theta(x).pow(2).sum(dim=1).mean()


class _ModelQualityRouter(BaseRouter):
    """Shared plumbing of MF and IRT: rows (prompt, model, quality), full-batch AdamW, the weight decay
    and the stopping epoch chosen on an inner validation part of the training prompts."""

    needs_states = True
    uses_model_ids: ClassVar[bool] = True  # the evaluation passes the real model ids of every pair
    net: ClassVar[type[nn.Module]] = _MFNet
    dim: ClassVar[int] = 16
    weight_decays: ClassVar[tuple[float, ...]] = (1e-3, 1e-2, 1e-1)

    def __init__(self, seed: int = 0, val_fraction: float = 0.15, epochs: int = 400, patience: int = 30):
        self.seed, self.val_fraction, self.epochs, self.patience = seed, val_fraction, epochs, patience
        self.model_index: dict[str, int] = {}
        self.module: nn.Module | None = None
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    def _ids(self, names: Sequence[str], generic: str, grow: bool) -> torch.Tensor:
        keys = [_model_key(n) for n in names]
        if grow:
            for key in [*keys, generic]:
                self.model_index.setdefault(key, len(self.model_index))
        return torch.tensor([self.model_index.get(k, self.model_index[generic]) for k in keys], dtype=torch.long)

    def _rows(self, idx: np.ndarray, e_ids: torch.Tensor, c_ids: torch.Tensor, q_e: np.ndarray, q_c: np.ndarray):
        """(prompt index, model id, target) for each example's edge, cloud, generic edge and generic cloud."""
        t = torch.as_tensor(idx, dtype=torch.long)
        ge = torch.full_like(t, self.model_index[GENERIC_EDGE])
        gc = torch.full_like(t, self.model_index[GENERIC_CLOUD])
        qe, qc = torch.as_tensor(q_e[idx]).float(), torch.as_tensor(q_c[idx]).float()
        return torch.cat([t] * 4), torch.cat([e_ids[t], c_ids[t], ge, gc]), torch.cat([qe, qc, qe, qc])

    def fit(self, train: Sequence[RoutingExample], train_states: TokenStates | None = None) -> BaseRouter:
        if not train:
            raise ValueError(f"{self.name}: no training examples")
        x = _embed(train, train_states, self.name)
        self.model_index = {}
        e_ids = self._ids([ex.edge_model for ex in train], GENERIC_EDGE, grow=True)
        c_ids = self._ids([ex.cloud_model for ex in train], GENERIC_CLOUD, grow=True)
        q_e, q_c = model_qualities(train)
        tr, val = _val_split(len(train), self.val_fraction, self.seed)
        self.mean, self.std = x[tr].mean(0), x[tr].std(0, unbiased=False).clamp_min(1e-6)
        x = (x - self.mean) / self.std
        p_tr, m_tr, y_tr = self._rows(tr, e_ids, c_ids, q_e, q_c)
        p_val, m_val, y_val = self._rows(val, e_ids, c_ids, q_e, q_c)
        x_tr = x[tr]  # the penalty's rows, gathered once rather than every epoch
        best: tuple[float, nn.Module | None] = (float("inf"), None)
        with torch_threads(1):
            for wd in self.weight_decays:
                torch.manual_seed(self.seed)
                module = self.net(x.shape[1], len(self.model_index), self.dim)
                opt = torch.optim.AdamW(module.parameters(), lr=1e-2, weight_decay=wd)
                run_best, run_state, waited = float("inf"), _snapshot(module), 0
                for _ in range(self.epochs):
                    module.train()
                    opt.zero_grad()
                    loss = nn.functional.mse_loss(module(x, p_tr, m_tr), y_tr) + module.penalty(x_tr)
                    loss.backward()
                    opt.step()
                    module.eval()
                    with torch.no_grad():
                        val_loss = float(nn.functional.mse_loss(module(x, p_val, m_val), y_val))
                    if val_loss < run_best - 1e-5:
                        run_best, run_state, waited = val_loss, _snapshot(module), 0
                    else:
                        waited += 1
                        if waited >= self.patience:
                            break
                module.load_state_dict(run_state)
                module.eval()
                if run_best < best[0]:
                    best = (run_best, module)
        self.module = best[1]
        return self

    def quality(self, examples: Sequence[RoutingExample], states: TokenStates | None, role: str) -> np.ndarray:
        """Predicted quality of each example's edge (`role="edge"`) or cloud model on its prompt."""
        if self.module is None or self.mean is None or self.std is None:
            raise RuntimeError(f"{self.name}: call fit() before scoring")
        x = (_embed(examples, states, self.name) - self.mean) / self.std
        names = [ex.edge_model if role == "edge" else ex.cloud_model for ex in examples]
        ids = self._ids(names, GENERIC_EDGE if role == "edge" else GENERIC_CLOUD, grow=False)
        with torch.no_grad():
            return self.module(x, torch.arange(len(x)), ids).double().numpy()

    def cloud_advantage(self, examples: Sequence[RoutingExample], states: TokenStates | None = None) -> np.ndarray:
        states = _check_states(examples, states, self.name)
        return self.quality(examples, states, "cloud") - self.quality(examples, states, "edge")


class MatrixFactorizationRouter(_ModelQualityRouter):
    """RouteLLM's matrix-factorisation router on per-model quality; advantage = score(p, cloud) − score(p, edge)."""

    name = "matrix_factorization"
    net = _MFNet
    dim = 16


class IRTRouter(_ModelQualityRouter):
    """IRT-style prompt difficulty × model ability; advantage = quality(p, cloud) − quality(p, edge)."""

    name = "irt"
    net = _IRTNet
    dim = 4


EXTRA: dict[str, type[BaseRouter]] = {
    "knn": KNNRouter,
    "mlp": MLPRouter,
    "matrix_factorization": MatrixFactorizationRouter,
    "irt": IRTRouter,
}


def _register() -> None:
    """Add the four to the registry, in the tables after the other learned baselines and before the oracle."""
    ROUTERS.update(EXTRA)
    SEEDED.update(EXTRA)
    at = BASELINES.index("oracle") if "oracle" in BASELINES else len(BASELINES)
    BASELINES[at:at] = [n for n in EXTRA if n not in BASELINES]


_register()

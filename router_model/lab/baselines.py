"""Routing baselines in RouteLLM's style: each router fits on training examples and returns one score.

`cloud_advantage(examples, states)` is higher for prompts that should go to the cloud first; the evaluation sends
the top-ρ share to the cloud. Learned baselines train small heads on the same frozen encoder's mean-pooled token
states as RouteT2I, with fixed seeds, and choose their regularisation and stopping epoch on a validation part of
the *training* split (never on test prompts)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from router_model.encoder import DEFAULT_ENCODER, TextEncoder, TokenStates
from router_model.lab.data import RoutingExample, quality_arrays
from router_model.prs import fit_prs_stats, pareto_relative_superiority


class BaseRouter:
    """A routing method: `fit` on training examples, then `cloud_advantage` on any examples."""

    name: ClassVar[str] = "base"
    needs_states: ClassVar[bool] = False

    def fit(self, train: Sequence[RoutingExample], train_states: TokenStates | None = None) -> BaseRouter:
        return self

    def cloud_advantage(self, examples: Sequence[RoutingExample], states: TokenStates | None = None) -> np.ndarray:
        raise NotImplementedError


def _check_states(examples: Sequence[RoutingExample], states: TokenStates | None, who: str) -> TokenStates:
    """The token states of `examples`, encoding with the default encoder when none were given."""
    if states is None:
        states = TextEncoder(DEFAULT_ENCODER).encode([ex.prompt for ex in examples])
    if len(states) != len(examples):
        raise ValueError(
            f"{who}: got {len(states)} token-state rows for {len(examples)} examples; pass one per example"
        )
    return states


# ---------------------------------------------------------------- label-free baselines


class RandomRouter(BaseRouter):
    """Uniform random scores from a fixed seed (ΔP ≈ 100ρ in expectation)."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def cloud_advantage(self, examples: Sequence[RoutingExample], states: TokenStates | None = None) -> np.ndarray:
        return np.random.default_rng(self.seed).random(len(examples))


class NounCountRouter(BaseRouter):
    """The paper's complexity proxy: more nouns (spaCy) → cloud first."""

    name = "noun_count"

    def cloud_advantage(self, examples: Sequence[RoutingExample], states: TokenStates | None = None) -> np.ndarray:
        from router_model.complexity import count_nouns

        return np.asarray(count_nouns([ex.prompt for ex in examples]), dtype=np.float64)


class PromptLengthRouter(BaseRouter):
    """Longer prompts → cloud first: encoder tokens when token states are given, else words."""

    name = "prompt_length"

    def cloud_advantage(self, examples: Sequence[RoutingExample], states: TokenStates | None = None) -> np.ndarray:
        if states is not None:
            return states.mask.sum(dim=1).numpy().astype(np.float64)
        return np.array([len(ex.prompt.split()) for ex in examples], dtype=np.float64)


class OracleRouter(BaseRouter):
    """The ceiling: reads the true qualities of the prompts it scores.

    The score is each prompt's cloud gain per metric divided by the mean gain of that metric over the
    scored set, averaged over metrics. Sending the top-ρ by this score maximises ΔP(ρ) exactly.
    """

    name = "oracle"

    def cloud_advantage(self, examples: Sequence[RoutingExample], states: TokenStates | None = None) -> np.ndarray:
        q_e, q_c = quality_arrays(examples)
        gain = q_c - q_e
        mean_gain = gain.mean(axis=0)
        mean_gain = np.where(np.abs(mean_gain) < 1e-12, 1e-12, mean_gain)
        return (gain / mean_gain).mean(axis=1)


# ---------------------------------------------------------------- learned heads on frozen embeddings


class _Head(nn.Module):
    """Standardise the features (train statistics), then a linear layer or a one-hidden-layer MLP."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, outputs: int, hidden: int):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        d = mean.shape[-1]
        self.net = (
            nn.Linear(d, outputs)
            if hidden <= 0
            else nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, outputs))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def _val_split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    if n_val < 2 or n - n_val < 2:
        return order, order  # too few to hold out: train and "validate" on everything
    return order[n_val:], order[:n_val]


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Temporarily limit torch's intra-op threads: on tiny full-batch problems, thread hand-offs cost more
    than they save (and on a busy machine many times more)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def fit_head(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    hidden: int = 0,
    weight_decays: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1),
    val_fraction: float = 0.15,
    epochs: int = 300,
    patience: int = 30,
    lr: float = 3e-3,
    seed: int = 0,
    min_delta: float = 1e-4,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.binary_cross_entropy_with_logits,
) -> nn.Module:
    """Full-batch AdamW on features [n, d] and targets [n, m]; the weight decay and the stopping epoch
    with the lowest loss on a seeded validation part of these (training) rows win."""
    x, y = x.float(), y.float().reshape(len(x), -1)
    train_idx, val_idx = _val_split(len(x), val_fraction, seed)
    x_tr, y_tr, x_val, y_val = x[train_idx], y[train_idx], x[val_idx], y[val_idx]
    mean, std = x_tr.mean(0), x_tr.std(0, unbiased=False).clamp_min(1e-6)
    best: tuple[float, nn.Module | None] = (float("inf"), None)
    with torch_threads(1):
        for wd in weight_decays:
            torch.manual_seed(seed)
            head = _Head(mean, std, y.shape[1], hidden)
            opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=wd)
            run_best, run_state, waited = float("inf"), _snapshot(head), 0
            for _ in range(epochs):
                head.train()
                opt.zero_grad()
                loss(head(x_tr), y_tr).backward()
                opt.step()
                head.eval()
                with torch.no_grad():
                    val = float(loss(head(x_val), y_val))
                if val < run_best - min_delta:
                    run_best, run_state, waited = val, _snapshot(head), 0
                else:
                    waited += 1
                    if waited >= patience:
                        break
            head.load_state_dict(run_state)
            head.eval()
            if run_best < best[0]:
                best = (run_best, head)
    assert best[1] is not None
    return best[1]


def _predict(head: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(head(x.float())).numpy().astype(np.float64)


class _EmbeddingRouter(BaseRouter):
    """Shared plumbing of the learned baselines: mean-pooled frozen token states → a fitted head."""

    needs_states = True

    def __init__(self, seed: int = 0, hidden: int = 0, val_fraction: float = 0.15):
        self.seed, self.hidden, self.val_fraction = seed, hidden, val_fraction
        self.head: nn.Module | None = None

    def _targets(self, train: Sequence[RoutingExample]) -> np.ndarray:
        raise NotImplementedError

    def _score(self, probs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def fit(self, train: Sequence[RoutingExample], train_states: TokenStates | None = None) -> BaseRouter:
        if not train:
            raise ValueError(f"{self.name}: no training examples")
        states = _check_states(train, train_states, self.name)
        y = torch.as_tensor(self._targets(train))
        self.head = fit_head(
            states.mean_pooled(), y, hidden=self.hidden, val_fraction=self.val_fraction, seed=self.seed
        )
        return self

    def cloud_advantage(self, examples: Sequence[RoutingExample], states: TokenStates | None = None) -> np.ndarray:
        if self.head is None:
            raise RuntimeError(f"{self.name}: call fit() before cloud_advantage()")
        return self._score(_predict(self.head, _check_states(examples, states, self.name).mean_pooled()))


def _train_prs(train: Sequence[RoutingExample]) -> np.ndarray:
    """PRS of the training examples under statistics fitted on them alone (no test-fold leakage)."""
    q_e, q_c = quality_arrays(train)
    return pareto_relative_superiority(q_e, q_c, fit_prs_stats(q_e, q_c, train[0].metrics))


class RouteLLMBertRouter(_EmbeddingRouter):
    """RouteLLM's BERT router: P(cloud better) = P(PRS < ½), a classifier on the frozen embeddings."""

    name = "routellm_bert"

    def _targets(self, train: Sequence[RoutingExample]) -> np.ndarray:
        return (_train_prs(train) < 0.5).astype(np.float32)

    def _score(self, probs: np.ndarray) -> np.ndarray:
        return probs[:, 0]


def normalized_gap(train: Sequence[RoutingExample], examples: Sequence[RoutingExample] | None = None) -> np.ndarray:
    """Per-example cloud − edge quality, each metric divided by its pooled std on `train`, averaged."""
    q_e, q_c = quality_arrays(train)
    scale = np.concatenate([q_e, q_c]).std(axis=0)
    scale = np.where(scale < 1e-12, 1.0, scale)
    if examples is not None:
        q_e, q_c = quality_arrays(examples)
    return ((q_c - q_e) / scale).mean(axis=1)


def balancing_threshold(gap: np.ndarray) -> float:
    """The t among the candidate values that makes the share of 1[gap ≤ t] closest to ½ (smallest t on ties)."""
    candidates = np.unique(gap)
    shares = np.array([(gap <= t).mean() for t in candidates])
    return float(candidates[int(np.argmin(np.abs(shares - 0.5)))])


class HybridLLMRouter(_EmbeddingRouter):
    """Hybrid LLM (Ding et al. 2024): label 1[q_e ≥ q_c − t] ("edge good enough"), t balancing the labels.

    Quality is the std-normalised mean over metrics; score = 1 − P(edge good enough).
    """

    name = "hybrid_llm"
    threshold: float | None = None

    def _targets(self, train: Sequence[RoutingExample]) -> np.ndarray:
        gap = normalized_gap(train)
        self.threshold = balancing_threshold(gap)
        return (gap <= self.threshold).astype(np.float32)

    def _score(self, probs: np.ndarray) -> np.ndarray:
        return 1.0 - probs[:, 0]


class ZooterRouter(_EmbeddingRouter):
    """ZOOTER (Lu et al. 2024): distil each model's normalised quality per metric, route on the predicted gap.

    Per metric, the two models' z-scored qualities are softmax-normalised into a distribution over
    {edge, cloud} (ZOOTER's reward normalisation); the head learns it with a KL (soft-label BCE) loss.
    Score = mean over metrics of P̂(cloud) − P̂(edge).
    """

    name = "zooter"

    def _targets(self, train: Sequence[RoutingExample]) -> np.ndarray:
        q_e, q_c = quality_arrays(train)
        scale = np.concatenate([q_e, q_c]).std(axis=0)
        scale = np.where(scale < 1e-12, 1.0, scale)
        return (1.0 / (1.0 + np.exp(-(q_c - q_e) / scale))).astype(np.float32)

    def _score(self, probs: np.ndarray) -> np.ndarray:
        return (2.0 * probs - 1.0).mean(axis=1)


# ---------------------------------------------------------------- RouteT2I


class RouteT2IMethod(BaseRouter):
    """RouteT2I as a baseline-style method: trains `train_router` per fold, or wraps a checkpoint dir.

    Score = 1 − PRŜ. `config` holds RouterConfig overrides (the ablation switches); a checkpoint is
    scored with its own encoder and never trained further.
    """

    name = "routet2i"
    needs_states = True

    def __init__(
        self,
        seed: int = 0,
        config: dict[str, Any] | None = None,
        checkpoint: str | Path | None = None,
        train_kwargs: dict[str, Any] | None = None,
        name: str | None = None,
    ):
        self.seed = seed
        self.config = dict(config or {})
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.train_kwargs = dict(train_kwargs or {})
        if name is not None:
            self.name = name
        self.router = None
        if self.checkpoint is not None:
            from router_model.model import RouteT2IRouter

            if not self.checkpoint.is_dir():
                raise FileNotFoundError(f"router checkpoint {self.checkpoint}: no such directory")
            self.router = RouteT2IRouter.from_pretrained(self.checkpoint)
            self.needs_states = False

    def fit(self, train: Sequence[RoutingExample], train_states: TokenStates | None = None) -> BaseRouter:
        if self.checkpoint is not None:
            return self  # a given checkpoint is evaluated as it is
        from router_model.lab.train import train_router
        from router_model.model import RouterConfig

        kwargs: dict[str, Any] = {"progress": False, "log": None} | self.train_kwargs
        config = RouterConfig(**self.config) if self.config else None
        self.router = train_router(list(train), config=config, seed=self.seed, token_states=train_states, **kwargs)
        return self

    def cloud_advantage(self, examples: Sequence[RoutingExample], states: TokenStates | None = None) -> np.ndarray:
        if self.router is None:
            raise RuntimeError(f"{self.name}: call fit() before cloud_advantage()")
        if self.checkpoint is not None or states is None:
            scores = self.router.score([ex.prompt for ex in examples])
        else:
            scores = self.router.score_states(states, prompts=[ex.prompt for ex in examples])
        return 1.0 - np.asarray(scores.prs, dtype=np.float64)


def _routet2i_variant(name: str, **config: Any) -> type[RouteT2IMethod]:
    def __init__(self: RouteT2IMethod, seed: int = 0, **kw: Any) -> None:
        RouteT2IMethod.__init__(self, seed=seed, config=config | kw.pop("config", {}), name=name, **kw)

    return type(name, (RouteT2IMethod,), {"name": name, "__init__": __init__, "__doc__": f"RouteT2I with {config}."})


ROUTERS: dict[str, type[BaseRouter]] = {
    "random": RandomRouter,
    "noun_count": NounCountRouter,
    "prompt_length": PromptLengthRouter,
    "routellm_bert": RouteLLMBertRouter,
    "hybrid_llm": HybridLLMRouter,
    "zooter": ZooterRouter,
    "oracle": OracleRouter,
    "routet2i": RouteT2IMethod,
    "routet2i_no_multi_metric": _routet2i_variant("routet2i_no_multi_metric", multi_metric=False),
    "routet2i_no_token_selection": _routet2i_variant("routet2i_no_token_selection", token_selection=False),
    "routet2i_no_dual_gate": _routet2i_variant("routet2i_no_dual_gate", dual_gate=False),
    # neither baselines nor the paper's ablations: the paper's tower alone; the cheap-feature prior alone (γ = 0)
    "routet2i_no_prior": _routet2i_variant("routet2i_no_prior", use_prior=False),
    "routet2i_prior_only": _routet2i_variant("routet2i_prior_only", residual_scale=0.0, residual_scale_auto=False),
}
BASELINES = ["random", "noun_count", "prompt_length", "routellm_bert", "hybrid_llm", "zooter", "oracle"]
ABLATIONS = ["routet2i_no_multi_metric", "routet2i_no_token_selection", "routet2i_no_dual_gate"]
VARIANTS = ["routet2i_no_prior", "routet2i_prior_only"]
SEEDED = {"random", "routellm_bert", "hybrid_llm", "zooter", "routet2i", *ABLATIONS, *VARIANTS}


def make_router(name: str, **kw: Any) -> BaseRouter:
    """A fresh router by registry name; `seed` is dropped for methods that do not use one."""
    if name not in ROUTERS:
        raise ValueError(f"unknown routing method {name!r}; choose from {', '.join(ROUTERS)}")
    if name not in SEEDED:
        kw.pop("seed", None)
    return ROUTERS[name](**kw)


from router_model.lab import baselines_extra  # noqa: E402, F401  (registers knn, mlp, matrix_factorization, irt)

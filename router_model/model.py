"""Dual-gated token-selection mixture-of-experts router (RouteT2I §5.1).

Given token states T [B, n, d] of a frozen text encoder, one expert per quality metric i (the block up to
the pooling is `router_model.moe.TokenMoE`, shared with the many-model router's "moe" tower):

    gate       A = softmax([T Eᵀ/√d, 0])         softmax over the experts plus a fixed null logit
    selection  expert i keeps its top-K tokens by A[:, i] (expert choice; padding never selected)
    dual gate  T_i^± = T P_i^± S_i,  T̂_i = σ(T_i^+ − T_i^−)      P_i^± [d, l], shared S_i [l, h]
    pooling    z_i = Σ_t a_it T̂_i[t] over the selected tokens, a renormalised gate weights
    heads      D̂_i = σ(u_iᵀ z_i + c_i),   PRŜ = Σ_i w_i D̂_i     (w from the PRS statistics)

Ensemble (`members` > 1): the router holds `members` independently trained copies of this head and
averages their D̂ (hence PRŜ). On a few hundred noisy human ratings a single head's held-out ΔP
swings by several points with its seed and its ~50-prompt validation split; averaging members that
were each early-stopped on a different inner validation fold damps that variance (lab/ensemble.py).

The null logit lets a token be relevant to no expert; without it a one-metric router (k = 1, e.g.
human-rating data with a single dimension) would have a constant gate A ≡ 1 and select nothing.
Ablations (`RouterConfig`): `multi_metric=False` → one expert and one head trained on PRS only;
`token_selection=False` → no expert embeddings, every real token pooled with equal weight;
`dual_gate=False` → one projection T̂_i = σ(T P_i S_i), no contrast.

A checkpoint (`save_pretrained`) is `config.json` + `model.safetensors` holding the head(s) only
(members under `members.<j>.`); the encoder is referenced by name (unless it was fine-tuned, then it
is saved under `encoder/`). A checkpoint without `members` in its config is a single head.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from router_model.encoder import DEFAULT_ENCODER, TextEncoder, TokenStates, pick_device
from router_model.moe import MoESpec, TokenMoE
from router_model.prior import FeaturePrior
from router_model.prs import PRSStats

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ENCODER_DIRNAME = "encoder"


@dataclass
class RouterConfig:
    """Everything needed to rebuild the router head; stored as `config.json` in the checkpoint."""

    metrics: list[str] = field(default_factory=list)
    encoder: str = DEFAULT_ENCODER
    input_dim: int | None = None  # the encoder's hidden size d; filled in by training when unknown
    top_k: int = 8
    low_rank: int = 8
    hidden: int = 64
    multi_metric: bool = True
    token_selection: bool = True
    dual_gate: bool = True
    dropout: float = 0.1
    members: int = 5
    max_length: int = 77
    prs_stats: dict[str, Any] | None = None
    encoder_finetuned: bool = False
    # the cheap-feature prior (router_model/prior.py): fitted by training when use_prior, None in old checkpoints
    use_prior: bool = True
    # the prior's ridge strength; None: chosen per training run by exact leave-one-out (lab/prior_fit.py)
    prior_alpha: float | None = None
    residual_scale: float = 0.25  # γ: the tower's weight on top of the prior at scoring time (training uses 1)
    # choose γ after training on the members' own validation folds (lab/residual_scale.py); off: keep the γ above
    residual_scale_auto: bool = True
    prior: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for name in ("top_k", "low_rank", "hidden", "max_length", "members"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"RouterConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"RouterConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.residual_scale < 0 or (self.prior_alpha is not None and self.prior_alpha < 0):
            raise ValueError("RouterConfig.residual_scale and prior_alpha must be >= 0")
        if self.prs_stats is not None and not self.metrics:
            self.metrics = list(self.prs_stats["metrics"])
        if self.prs_stats is not None and list(self.prs_stats["metrics"]) != list(self.metrics):
            raise ValueError(
                f"RouterConfig.metrics {self.metrics} differ from the PRS statistics' metrics "
                f"{self.prs_stats['metrics']}; train the router on the statistics of its own dataset"
            )

    @property
    def num_experts(self) -> int:
        return len(self.metrics) if self.multi_metric else 1

    @property
    def head_names(self) -> list[str]:
        """Names of the columns of `d_hat`: the metrics, or just `prs` when multi_metric is off."""
        return list(self.metrics) if self.multi_metric else ["prs"]

    def moe_spec(self) -> MoESpec:
        """The token MoE block's shape and switches."""
        if self.input_dim is None:
            raise ValueError("RouterConfig.input_dim is unset: give the encoder's hidden size")
        return MoESpec(
            experts=self.num_experts, dim=int(self.input_dim), top_k=self.top_k, low_rank=self.low_rank,
            hidden=self.hidden, token_selection=self.token_selection, dual_gate=self.dual_gate, dropout=self.dropout,
        )  # fmt: skip

    def stats(self) -> PRSStats | None:
        return PRSStats.from_dict(self.prs_stats) if self.prs_stats is not None else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RouterConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown router config field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RouterConfig:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no router config here; is this a router checkpoint directory?")
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                data.setdefault("members", 1)  # checkpoints from before ensembles hold one head
            return cls.from_dict(data)
        except (json.JSONDecodeError, TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"{path}: invalid router config: {exc}") from exc


@dataclass
class RouterScores:
    """Router output for a batch of prompts: PRŜ [B] and the per-head predictions D̂ [B, k]."""

    prs: np.ndarray
    per_metric: np.ndarray
    metrics: list[str]

    @property
    def cloud_advantage(self) -> np.ndarray:
        """1 − PRŜ: the ranking key for sending prompts to the cloud."""
        return 1.0 - self.prs


class RouteT2IRouter(TokenMoE):
    """The paper's router: the token MoE (`router_model.moe`) and one quality head per expert."""

    def __init__(self, config: RouterConfig, encoder: TextEncoder | None = None):
        super().__init__()
        if not config.metrics:
            raise ValueError("RouterConfig.metrics is empty: name the quality metrics (one expert each)")
        if config.input_dim is None:
            raise ValueError("RouterConfig.input_dim is unset: give the encoder's hidden size")
        self.config = config
        self._encoder = encoder
        self.encoder_dtype = "float32"  # of the encoder loaded lazily; from_pretrained may choose bfloat16
        self.training_summary: dict[str, Any] | None = None
        stats = config.stats()
        k = config.num_experts
        weights = stats.weights if (stats is not None and config.multi_metric) else [1.0 / k] * k
        self.register_buffer("metric_weights", torch.tensor(weights, dtype=torch.float32), persistent=False)
        self.prior = FeaturePrior.from_dict(config.prior) if config.prior is not None else None
        self.members: nn.ModuleList | None = None
        if config.members > 1:
            single = dataclasses.replace(config, members=1)
            self.members = nn.ModuleList(RouteT2IRouter(single) for _ in range(config.members))
            return
        self.build_moe(config.moe_spec())
        h = config.hidden
        # with a prior the tower starts at zero: the untrained router is the prior (what the heuristics know)
        head_init = torch.zeros(k, h) if self.prior is not None else torch.randn(k, h) / math.sqrt(h)
        self.head_weight = nn.Parameter(head_init)
        self.head_bias = nn.Parameter(torch.zeros(k))

    def set_residual_scale(self, gamma: float) -> None:
        """Score with the tower at weight `gamma` on top of the prior (the ensemble's members too)."""
        if gamma < 0:
            raise ValueError(f"residual_scale must be >= 0, got {gamma}")
        self.config.residual_scale = float(gamma)
        for member in self.members or []:
            member.config.residual_scale = float(gamma)

    @classmethod
    def from_members(cls, members: Sequence[RouteT2IRouter]) -> RouteT2IRouter:
        """One ensemble router from single-head routers trained on the same data, statistics and encoder."""
        if not members:
            raise ValueError("an ensemble needs at least one member router")
        first = members[0].config
        for j, member in enumerate(members):
            if member.members is not None:
                raise ValueError(f"member {j} is itself an ensemble; pass single-head routers")
            if dataclasses.replace(member.config, members=1) != dataclasses.replace(first, members=1):
                raise ValueError(f"member {j}'s config differs from member 0's; members must share one config")
        if len(members) == 1:
            return members[0]
        router = cls(dataclasses.replace(first, members=len(members)), encoder=members[0]._encoder)
        for target, member in zip(router.members, members, strict=True):
            target.load_state_dict(member.state_dict())
        return router.to(members[0].device)

    # ------------------------------------------------------------------ the head

    def gate(self, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`TokenMoE.gate`; an ensemble has one gate per member."""
        if self.members is not None:
            raise TypeError("an ensemble router has one gate per member: call router.members[j].gate(...)")
        return super().gate(states, mask)

    def logits(
        self,
        states: torch.Tensor,
        mask: torch.Tensor,
        features: torch.Tensor | None = None,
        residual_scale: float | None = None,
    ) -> torch.Tensor:
        """Per-head logits [B, k] (σ of these is D̂; for an ensemble, the logit of the members' mean D̂).

        With a prior: prior logits from `features` (`prior.text_features` of the prompts) and the mask, plus
        `residual_scale` (default the config's γ; training passes 1) × the tower's logits."""
        if states.dim() != 3 or mask.shape != states.shape[:2]:
            raise ValueError(
                f"expected states [B, n, d] and mask [B, n], got {tuple(states.shape)}, {tuple(mask.shape)}"
            )
        if states.shape[-1] != self.config.input_dim:
            raise ValueError(
                f"token states have width {states.shape[-1]} but the router expects {self.config.input_dim}: "
                f"use the encoder it was trained with ({self.config.encoder})"
            )
        if self.members is not None:
            d_hat = torch.stack(
                [torch.sigmoid(m.logits(states, mask, features, residual_scale)) for m in self.members]
            ).mean(0)
            return torch.logit(d_hat.clamp(1e-7, 1 - 1e-7))
        if self.prior is not None and features is None:
            raise ValueError("this router has a feature prior: pass features=router.prior.text_features(prompts)")
        pooled = self.pool(states, mask)
        tower = torch.einsum("bkh,kh->bk", pooled, self.head_weight) + self.head_bias
        if self.prior is None:
            return tower
        scale = self.config.residual_scale if residual_scale is None else residual_scale
        return self.prior.logits(features, mask) + scale * tower

    def forward(
        self, states: torch.Tensor, mask: torch.Tensor, features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(D̂ [B, k], PRŜ [B]), both in (0, 1)."""
        if self.members is not None:
            d_hat = torch.stack([m(states, mask, features)[0] for m in self.members]).mean(0)
            return d_hat, d_hat @ self.metric_weights
        d_hat = torch.sigmoid(self.logits(states, mask, features))
        return d_hat, d_hat @ self.metric_weights

    def prior_features(self, prompts: Sequence[str]) -> torch.Tensor | None:
        """The prior's text features of `prompts` on the router's device (None without a prior)."""
        if self.prior is None:
            return None
        return torch.from_numpy(self.prior.text_features(prompts)).to(self.device)

    # ------------------------------------------------------------------ prompts in, scores out

    @property
    def device(self) -> torch.device:
        return self.metric_weights.device

    @property
    def encoder(self) -> TextEncoder:
        """The text encoder, loaded on first use on the router's device."""
        if self._encoder is None:
            self._encoder = TextEncoder(
                self.config.encoder, device=str(self.device), max_length=self.config.max_length,
                dtype=self.encoder_dtype,
            )  # fmt: skip
        return self._encoder

    def attach_encoder(self, encoder: TextEncoder) -> None:
        self._encoder = encoder

    @torch.inference_mode()
    def score_states(
        self, token_states: TokenStates, batch_size: int = 256, prompts: Sequence[str] | None = None
    ) -> RouterScores:
        """Scores for pre-encoded prompts (the evaluator encodes a dataset once); a router with a prior also
        needs the `prompts` (its text features)."""
        self.eval()
        if self.prior is not None and (prompts is None or len(prompts) != len(token_states)):
            raise ValueError("this router has a feature prior: pass the prompts of the token states")
        features = self.prior_features(prompts) if self.prior is not None else None
        d_parts, p_parts = [], []
        for start in range(0, len(token_states), batch_size):
            rows = range(start, min(start + batch_size, len(token_states)))
            part = token_states.subset(rows)
            part_features = features[start : rows.stop] if features is not None else None
            d_hat, prs_hat = self(part.states.to(self.device), part.mask.to(self.device), part_features)
            d_parts.append(d_hat.float().cpu())
            p_parts.append(prs_hat.float().cpu())
        if not p_parts:
            return RouterScores(np.zeros(0), np.zeros((0, self.config.num_experts)), self.config.head_names)
        return RouterScores(torch.cat(p_parts).numpy(), torch.cat(d_parts).numpy(), self.config.head_names)

    @torch.inference_mode()
    def score(self, prompts: Sequence[str], batch_size: int = 64) -> RouterScores:
        """PRŜ and per-metric predictions for raw prompts (encoder + head, batched)."""
        if isinstance(prompts, str):
            raise TypeError("score() takes a sequence of prompts, not a single string")
        self.eval()
        d_parts, p_parts = [], []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            states = self.encoder.forward_tokens(self.encoder.tokenize(chunk))
            d_hat, prs_hat = self(
                states.states.to(self.device), states.mask.to(self.device), self.prior_features(chunk)
            )
            d_parts.append(d_hat.float().cpu())
            p_parts.append(prs_hat.float().cpu())
        if not p_parts:
            return RouterScores(np.zeros(0), np.zeros((0, self.config.num_experts)), self.config.head_names)
        return RouterScores(torch.cat(p_parts).numpy(), torch.cat(d_parts).numpy(), self.config.head_names)

    # ------------------------------------------------------------------ checkpoints

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json + model.safetensors (head only; the encoder is referenced by name)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG_NAME)
        tensors = {name: p.detach().cpu().contiguous() for name, p in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "kind": "routet2i-router"})
        if self.config.encoder_finetuned:
            if self._encoder is None:
                raise ValueError("config says the encoder was fine-tuned, but the router holds no encoder to save")
            self._encoder.model.save_pretrained(directory / ENCODER_DIRNAME)
            self._encoder.tokenizer.save_pretrained(directory / ENCODER_DIRNAME)
        if self.training_summary is not None:
            (directory / "training_summary.json").write_text(json.dumps(self.training_summary, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str = "auto", encoder_dtype: str = "float32"
    ) -> RouteT2IRouter:
        """Load a checkpoint written by `save_pretrained`; the encoder loads lazily on first `score`.

        `encoder_dtype="bfloat16"` runs the frozen encoder in bfloat16 (about 1.5× faster per prompt on
        CPUs with bf16 support; on 5,000 COCO captions it changed under 1% of routing decisions, see
        docs/BENCHMARKS.md); the router head stays float32."""
        from safetensors.torch import load_file

        directory = Path(directory)
        config = RouterConfig.load(directory / CONFIG_NAME)
        if config.encoder_finetuned:
            config.encoder = str(directory / ENCODER_DIRNAME)
        weights_path = directory / WEIGHTS_NAME
        if not weights_path.exists():
            raise FileNotFoundError(f"{weights_path}: router weights missing from the checkpoint")
        router = cls(config)
        missing, unexpected = router.load_state_dict(load_file(str(weights_path)), strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{weights_path}: weights do not match config.json (missing {missing}, unexpected {unexpected}); "
                "the checkpoint is corrupt or from another version"
            )
        router.encoder_dtype = encoder_dtype
        return router.to(pick_device(device)).eval()

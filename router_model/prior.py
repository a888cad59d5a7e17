"""A linear prior on cheap prompt features: where the router starts before the MoE tower corrects it.

On public human ratings the prompt's length beats every learned text model on prompts those models
never saw (docs/RESULTS.md, docs/ROUTER_LODO.md). So the router's head logit for metric i is

    logit_i = b_i + w_iᵀ (f − μ) / σ  +  γ · MoE_i(tokens)

with f the regex features of `features.py` (no spaCy: they cost microseconds at serving time) and
`log_tokens`, the log of the encoder's real-token count (read off the attention mask, so it matches the
tokens the tower sees). w, b come from a closed-form ridge fit on the training prompts
(`lab/prior_fit.py`, its strength chosen by leave-one-out); the tower is then trained on top of the fixed
prior, and γ (`residual_scale`, chosen on the training run's validation folds: `lab/residual_scale.py`)
weighs its correction at scoring time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from router_model.features import FEATURE_NAMES, prompt_features

TOKENS = "log_tokens"
PRIOR_FEATURES: tuple[str, ...] = (*(n for n in FEATURE_NAMES if n != "log_nouns"), TOKENS)


@dataclass
class FeaturePrior:
    """Ridge weights per head on standardised features (`features` order; `log_tokens` last if present)."""

    features: list[str]
    mean: list[float]
    scale: list[float]
    weight: list[list[float]]  # [k heads][F features]
    bias: list[float]  # [k]
    alpha: float

    def __post_init__(self) -> None:
        n = len(self.features)
        if TOKENS in self.features and self.features[-1] != TOKENS:
            raise ValueError(f"{TOKENS!r} must be the last prior feature, got {self.features}")
        unknown = [f for f in self.text_names if f not in FEATURE_NAMES]
        if unknown:
            raise ValueError(f"unknown prior feature(s) {unknown}; known: {[*FEATURE_NAMES, TOKENS]}")
        if len(self.mean) != n or len(self.scale) != n or any(len(row) != n for row in self.weight):
            raise ValueError("prior mean, scale and weight rows must each have one value per feature")
        if len(self.bias) != len(self.weight):
            raise ValueError("prior bias must have one value per head")

    @property
    def text_names(self) -> list[str]:
        """The features computed from the prompt text (all but `log_tokens`)."""
        return [f for f in self.features if f != TOKENS]

    def text_features(self, prompts: Sequence[str]) -> np.ndarray:
        """[N, len(text_names)] float32: what `logits` takes as `text_features`."""
        return prompt_features(list(prompts), names=self.text_names)

    def logits(self, text_features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-head prior logits [B, k] from the text features [B, F'] and the attention mask [B, n]."""
        return self.logits_from_counts(text_features, mask.to(torch.float32).sum(1, keepdim=True))

    def logits_from_counts(self, text_features: torch.Tensor, token_counts: torch.Tensor) -> torch.Tensor:
        """`logits` from the real-token counts [B, 1] (float32) instead of the mask: no encoder needed."""
        columns = [text_features.to(torch.float32)]
        if TOKENS in self.features:
            columns.append(torch.log1p(token_counts))
        x = torch.cat(columns, dim=1)
        mean, scale, weight, bias = (t.to(x.device) for t in self._tensors)
        return ((x - mean) / scale) @ weight.t() + bias

    @cached_property
    def _tensors(self) -> tuple[torch.Tensor, ...]:
        """mean, scale, weight, bias as float32 tensors, built once (the router scores on a hot path)."""
        return tuple(torch.tensor(v, dtype=torch.float32) for v in (self.mean, self.scale, self.weight, self.bias))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeaturePrior:
        return cls(**data)

"""Scoring with the router's feature prior alone, for a checkpoint whose tower weight γ is 0.

A router with a prior scores `logit = prior(features, tokens) + γ · tower(tokens)`. At γ = 0 (the shipped
checkpoint, see the README) the tower's term is zero whatever it computes, so running the encoder and the
MoE only to multiply them by zero is waste: this scorer computes the same float32 operations on the prior's
inputs alone (the regex features and the tokenizer's real-token count, truncated like the encoder's input),
and so makes the same decisions as every runtime of the full router (tests/test_prior_scorer.py checks it on
COCO captions). One prompt costs a tokenizer call and the regex features: well under a millisecond on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from router_model.model import RouterScores, RouteT2IRouter


def scores_with_prior_only(router: RouteT2IRouter) -> bool:
    """Whether the router's scores are its prior's alone (a prior and γ = 0)."""
    return router.prior is not None and router.config.residual_scale == 0


class PriorScorer:
    """A `RouteT2IRouter` stand-in for `score(prompts)` when `scores_with_prior_only(router)`."""

    def __init__(self, router: RouteT2IRouter):
        if not scores_with_prior_only(router):
            raise ValueError("PriorScorer needs a router with a feature prior scored at residual_scale (γ) = 0")
        from transformers import AutoTokenizer

        from router_model.encoder import resolve_encoder_path

        self.config, self.prior = router.config, router.prior
        self.metric_weights = router.metric_weights.detach().float().cpu()
        encoder = router._encoder  # reuse a loaded tokenizer; else load the tokenizer only, not the encoder
        if encoder is not None:
            self.tokenizer = encoder.tokenizer
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(resolve_encoder_path(self.config.encoder))

    def token_counts(self, prompts: Sequence[str]) -> torch.Tensor:
        """[B, 1] float32: the real tokens the encoder would see (its mask's sum: truncated at max_length)."""
        ids = self.tokenizer(list(prompts), truncation=True, max_length=self.config.max_length)["input_ids"]
        return torch.tensor([[float(len(row))] for row in ids], dtype=torch.float32)

    @torch.inference_mode()
    def score(self, prompts: Sequence[str], batch_size: int = 64) -> RouterScores:
        from router_model.model import RouterScores

        if isinstance(prompts, str):
            raise TypeError("score() takes a sequence of prompts, not a single string")
        if not prompts:
            return RouterScores(np.zeros(0), np.zeros((0, self.config.num_experts)), self.config.head_names)
        features = torch.from_numpy(self.prior.text_features(prompts))
        d_hat = torch.sigmoid(self.prior.logits_from_counts(features, self.token_counts(prompts)))
        return RouterScores((d_hat @ self.metric_weights).numpy(), d_hat.numpy(), self.config.head_names)

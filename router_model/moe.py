"""The paper's dual-gated token-selection mixture of experts (RouteT2I §5.1), as one reusable block.

Given token states T [B, n, d] of a frozen text encoder and k experts:

    gate       A = softmax([T Eᵀ/√d, 0])         softmax over the experts plus a fixed null logit
    selection  expert i keeps its top-K tokens by A[:, i] (expert choice; padding never selected)
    dual gate  T_i^± = T P_i^± S_i,  T̂_i = σ(T_i^+ − T_i^−)      P_i^± [d, l], shared S_i [l, h]
    pooling    z_i = Σ_t a_it T̂_i[t] over the selected tokens, a renormalised gate weights

`TokenMoE.pool` returns z [B, k, h]. The paper's router (`RouteT2IRouter`) puts one quality head per
expert on top; the many-model router (`MultiRouter`, tower "moe") flattens z into its prompt vector θ(p).

Ablations: `token_selection=False` → no expert embeddings, every real token pooled with equal weight;
`dual_gate=False` → one projection T̂_i = σ(T P_i S_i), no contrast.

The block registers its parameters on itself under fixed names (norm, expert_embeddings, proj_pos, proj_neg,
scoring, scoring_bias): `RouteT2IRouter` subclasses it so its checkpoints keep their flat state_dict keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class MoESpec:
    """Shape and switches of the block."""

    experts: int
    dim: int  # the encoder's hidden size d
    top_k: int = 8
    low_rank: int = 8
    hidden: int = 64
    token_selection: bool = True
    dual_gate: bool = True
    dropout: float = 0.1


class TokenMoE(nn.Module):
    """Gate, top-K token selection, dual low-rank projections, scoring and pooling per expert."""

    def __init__(self, spec: MoESpec | None = None):
        super().__init__()
        if spec is not None:  # a subclass may build the block later (or not at all: an ensemble of them)
            self.build_moe(spec)

    def build_moe(self, spec: MoESpec) -> None:
        """Create the block's parameters on `self` (in a fixed order: a seed gives the same initial weights)."""
        self.moe_spec = spec
        k, d, rank, h = spec.experts, spec.dim, spec.low_rank, spec.hidden
        std_p = 1.0 / math.sqrt(d)
        self.norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(spec.dropout)
        if spec.token_selection:
            self.expert_embeddings = nn.Parameter(torch.randn(k, d) * std_p)
        self.proj_pos = nn.Parameter(torch.randn(k, d, rank) * std_p)
        if spec.dual_gate:
            self.proj_neg = nn.Parameter(torch.randn(k, d, rank) * std_p)
        self.scoring = nn.Parameter(torch.randn(k, rank, h) / math.sqrt(rank))
        self.scoring_bias = nn.Parameter(torch.zeros(k, h))

    def gate(self, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooling weights [B, n, k] (sum 1 over tokens per expert) and the selection [B, n, k] (bool).

        `states` are already layer-normed (`self.norm`)."""
        spec = self.moe_spec
        mask = mask.bool()
        real = mask.unsqueeze(-1).expand(*mask.shape, spec.experts)
        if not spec.token_selection:
            weights = real.to(states.dtype)
            return weights / weights.sum(1, keepdim=True).clamp_min(1.0), real
        logits = states @ self.expert_embeddings.t() / math.sqrt(states.shape[-1])
        null = torch.zeros_like(logits[..., :1])
        affinity = torch.softmax(torch.cat([logits, null], dim=-1), dim=-1)[..., :-1]
        affinity = affinity.masked_fill(~real, 0.0)
        top = min(spec.top_k, states.shape[1])
        ranked = affinity.masked_fill(~real, -1.0)
        index = ranked.topk(top, dim=1).indices
        selected = torch.zeros_like(real).scatter(1, index, True) & real
        weights = affinity * selected
        return weights / weights.sum(1, keepdim=True).clamp_min(1e-12), selected

    def pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-expert pooled token scores z [B, k, h] of raw token states [B, n, d] (padding ignored)."""
        mask = mask.bool()
        states = self.norm(states.masked_fill(~mask.unsqueeze(-1), 0.0))
        weights, _ = self.gate(states, mask)
        score = torch.einsum("bnd,kdl->bnkl", self.dropout(states), self.proj_pos)
        if self.moe_spec.dual_gate:  # independent dropout masks for the two gates
            score = score - torch.einsum("bnd,kdl->bnkl", self.dropout(states), self.proj_neg)
        tokens = torch.sigmoid(torch.einsum("bnkl,klh->bnkh", score, self.scoring) + self.scoring_bias)
        return self.dropout(torch.einsum("bnk,bnkh->bkh", weights, tokens))

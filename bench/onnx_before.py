"""The router's fp32 ONNX graph in the layout it had when issue 13 was filed (each ensemble member's head traced
on its own), exported once into the ONNX cache: the reference `bench/router_latency.py` measures the faster paths
against, next to today's graph (the members merged into one head, router_model/onnx_runtime.py)."""

from __future__ import annotations

import copy
import math
import types
from pathlib import Path

import torch

from router_model.model import RouteT2IRouter
from router_model.onnx_runtime import _fingerprint, cache_dir, export_onnx


def _traceable_gate(self, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`RouteT2IRouter.gate` with `top_k` fixed and a tensor `scatter` source (what the exporter takes)."""
    real = mask.bool().unsqueeze(-1).expand(*mask.shape, self.config.num_experts)
    if not self.config.token_selection:
        weights = real.to(states.dtype)
        return weights / weights.sum(1, keepdim=True).clamp_min(1.0), real
    logits = states @ self.expert_embeddings.t() / math.sqrt(states.shape[-1])
    null = torch.zeros_like(logits[..., :1])
    affinity = torch.softmax(torch.cat([logits, null], dim=-1), dim=-1)[..., :-1].masked_fill(~real, 0.0)
    index = affinity.masked_fill(~real, -1.0).topk(self.config.top_k, dim=1).indices
    selected = torch.zeros_like(real).scatter(1, index, torch.ones_like(index, dtype=torch.bool)) & real
    weights = affinity * selected
    return weights / weights.sum(1, keepdim=True).clamp_min(1e-12), selected


class _MembersGraph(torch.nn.Module):
    """input_ids, attention_mask[, features] → (D̂, PRŜ): the encoder, then `RouteT2IRouter.forward` as is."""

    def __init__(self, router: RouteT2IRouter):
        super().__init__()
        self.router = copy.deepcopy(router).float().cpu().eval()
        self.encoder = copy.deepcopy(router.encoder.model).float().cpu().eval()
        for head in self.router.members if self.router.members is not None else [self.router]:
            head.gate = types.MethodType(_traceable_gate, head)

    def forward(self, input_ids, attention_mask, features=None):
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.router(states, attention_mask.bool(), features)


def before_graph(router: RouteT2IRouter) -> Path:
    """The cached path of the members-one-by-one fp32 graph of `router`, exported on first use."""
    path = cache_dir() / f"router-{_fingerprint(router, 'fp32')}-members.onnx"
    if not path.exists():
        export_onnx(router, path, _MembersGraph(router))
    return path

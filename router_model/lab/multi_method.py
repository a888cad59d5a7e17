"""A many-model checkpoint (`kind: multi`) as an evaluation method: scores each pair by its canonical model ids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from router_model.encoder import TokenStates
from router_model.lab.baselines import BaseRouter
from router_model.lab.data import RoutingExample
from router_model.multi_router import MultiRouter


class MultiCheckpointMethod(BaseRouter):
    """Never trained: the checkpoint's cloud advantage for the examples' (edge, cloud) pair; `heads` records
    which head ("pair" or "generic") scored each call."""

    name = "checkpoint"
    needs_states = False

    def __init__(self, checkpoint: str | Path, name: str = "checkpoint"):
        self.name = name
        self.router = MultiRouter.from_pretrained(checkpoint)
        self.heads: list[str] = []

    def fit(self, train: Sequence[RoutingExample], train_states: TokenStates | None = None) -> BaseRouter:
        return self

    def cloud_advantage(self, examples: Sequence[RoutingExample], states: TokenStates | None = None) -> np.ndarray:
        out = np.zeros(len(examples))
        by_pair: dict[tuple[str, str], list[int]] = {}
        for i, ex in enumerate(examples):
            by_pair.setdefault((ex.edge_model, ex.cloud_model), []).append(i)
        for (edge, cloud), idx in by_pair.items():
            scores = self.router.score([examples[i].prompt for i in idx], edge, cloud)
            out[idx] = scores.advantage
            self.heads.append(scores.head)
        return out

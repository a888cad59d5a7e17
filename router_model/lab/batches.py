"""What a training run feeds on: PRS labels, the validation split, cached token states in batches."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from router_model.encoder import TextEncoder, TokenStates
from router_model.lab.data import DatasetError, RoutingExample, kfold_splits, quality_arrays
from router_model.model import RouterConfig, RouteT2IRouter
from router_model.prs import PRSStats, fit_prs_stats, normalized_distances, prs_from_distances


def prs_targets(examples: Sequence[RoutingExample], stats: PRSStats) -> tuple[np.ndarray, np.ndarray]:
    """Normalised distances D [n, k] and PRS [n] of the examples under `stats`."""
    q_edge, q_cloud = quality_arrays(examples)
    distances = normalized_distances(q_edge, q_cloud, stats)
    return distances, prs_from_distances(distances, stats)


def validation_split(
    examples: Sequence[RoutingExample], val_fraction: float, seed: int = 0, fold: int = 0
) -> tuple[list[int], list[int]]:
    """(fit_idx, val_idx) with about `val_fraction` of the prompts held out, grouped by prompt text.

    The prompts are cut into round(1 / val_fraction) folds (by `seed`); `fold` picks the held-out one."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0.0:
        return list(range(len(examples))), []
    folds = max(2, round(1.0 / val_fraction))
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in [0, {folds}) for val_fraction {val_fraction}, got {fold}")
    try:
        fit_idx, val_idx = kfold_splits(examples, k=folds, seed=seed)[fold]
    except DatasetError as exc:
        raise DatasetError(f"cannot hold out {val_fraction:.0%} of the prompts for validation: {exc}") from exc
    return fit_idx, val_idx


@contextmanager
def single_thread(enabled: bool) -> Iterator[None]:
    """Run the head's tiny CPU ops on one thread: on a busy 2-core machine the default two threads
    made an epoch about 5x slower (measured), and the head gains nothing from intra-op parallelism."""
    previous = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclasses.dataclass
class Batches:
    """Token states (cached) or prompts (fine-tuning) with their labels, on the training device.

    With `rows`, example i's token states are row `rows[i]` of `states` (a view of shared states, not a copy)."""

    prompts: list[str]
    distances: torch.Tensor
    prs: torch.Tensor
    states: TokenStates | None
    rows: torch.Tensor | None = None
    features: torch.Tensor | None = None  # the prior's text features, one row per example (None: no prior)

    def __len__(self) -> int:
        return len(self.prompts)

    def features_of(self, index: Sequence[int]) -> torch.Tensor | None:
        return self.features[index] if self.features is not None else None

    def inputs(self, index: Sequence[int], encoder: TextEncoder | None, device: torch.device) -> TokenStates:
        if self.states is not None:
            part = self.states.subset(index if self.rows is None else self.rows[torch.as_tensor(index)])
            return TokenStates(part.states.to(device), part.mask.to(device))
        assert encoder is not None
        return encoder.forward_tokens(encoder.tokenize([self.prompts[i] for i in index]))


def resolve_stats(train: Sequence[RoutingExample], stats: PRSStats | None, config: RouterConfig | None) -> PRSStats:
    if stats is None and config is not None and config.prs_stats is not None:
        stats = config.stats()
    if stats is None:
        q_edge, q_cloud = quality_arrays(train)
        stats = fit_prs_stats(q_edge, q_cloud, train[0].metrics)
    if list(stats.metrics) != list(train[0].metrics):
        raise DatasetError(
            f"PRS statistics are for metrics {stats.metrics} but the examples have {train[0].metrics}; "
            "use the statistics of this dataset (its .prs.json sidecar) or let training fit them"
        )
    return stats


def check_periods(
    n: int, batch_size: int, generator: torch.Generator, epochs: int, checks_per_epoch: int
) -> Iterator[tuple[int | float, list[torch.Tensor]]]:
    """(epoch label, index batches) between two validation checks: each epoch one random permutation cut into
    batches, the batches cut into `checks_per_epoch` runs (one run per epoch: the classic loop)."""
    for epoch in range(1, epochs + 1):
        batches = torch.randperm(n, generator=generator).split(batch_size)
        runs = [r for r in np.array_split(np.arange(len(batches)), checks_per_epoch) if len(r)]
        for q, run in enumerate(runs, 1):
            label = epoch if len(runs) == 1 else round(epoch - 1 + q / len(runs), 4)
            yield label, [batches[i] for i in run]


def batch_logits(
    router: RouteT2IRouter,
    x: TokenStates,
    piece: int | None,
    features: torch.Tensor | None = None,
    residual_scale: float = 1.0,
) -> torch.Tensor:
    """`router.logits` of one batch as training sees it (the tower at full weight on top of the prior, given the
    batch's prior `features`, unless `residual_scale` says otherwise); with `piece`, computed in length-sorted
    pieces of that many prompts.

    A prompt's logits do not depend on the other prompts of its batch or on padding, so the pieces give the
    same values (up to dropout draws) while each piece pads only to its own longest prompt."""
    if piece is None or len(x) <= piece:
        return router.logits(x.states, x.mask, features, residual_scale=residual_scale)
    lengths = x.mask.sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    parts = []
    for chunk in order.split(piece):
        width = max(int(lengths[chunk].max()), 1)
        part_features = features[chunk] if features is not None else None
        parts.append(
            router.logits(x.states[chunk, :width], x.mask[chunk, :width], part_features, residual_scale=residual_scale)
        )
    return torch.cat(parts)[torch.argsort(order)]

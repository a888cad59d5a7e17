"""The cross-validated ensemble: M single heads, each early-stopped on its own validation fold, averaged."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from router_model.encoder import TextEncoder, TokenStates, pick_device
from router_model.lab.batches import resolve_stats
from router_model.lab.data import RoutingExample
from router_model.lab.train_loop import fit_single
from router_model.model import RouterConfig, RouteT2IRouter
from router_model.prs import PRSStats


def train_ensemble(
    train: list[RoutingExample],
    *,
    members: int,
    config: RouterConfig | None,
    stats: PRSStats | None,
    encoder: TextEncoder | None,
    token_states: TokenStates | None,
    device: str,
    seed: int,
    val_fraction: float,
    val_fold: int,
    log: Callable[[str], None],
    started: float,
    single_kwargs: dict[str, Any],
) -> RouteT2IRouter:
    """Train `members` single-head routers on disjoint validation folds and average them (one checkpoint)."""
    if val_fraction <= 0.0:
        raise ValueError(
            f"an ensemble of {members} members early-stops each on its own validation fold; "
            "val_fraction must be > 0 (or set RouterConfig.members=1)"
        )
    folds = max(2, round(1.0 / val_fraction))
    if members > folds:
        raise ValueError(
            f"RouterConfig.members={members} needs as many validation folds, but val_fraction {val_fraction} "
            f"gives {folds}; use val_fraction <= {1.0 / members:.3g} or fewer members"
        )
    stats = resolve_stats(train, stats, config)
    single = dataclasses.replace(config or RouterConfig(metrics=list(stats.metrics)), members=1)
    if token_states is None:
        if encoder is None:
            encoder = TextEncoder(single.encoder, device=str(pick_device(device)), max_length=single.max_length)
        token_states = encoder.encode([ex.prompt for ex in train])
    trained = []
    for j in range(members):
        log(f"ensemble member {j + 1}/{members}")
        trained.append(
            fit_single(
                train,
                config=single,
                stats=stats,
                val_fraction=val_fraction,
                val_fold=(val_fold + j) % folds,
                seed=seed + j,
                device=device,
                encoder=encoder,
                token_states=token_states,
                log=log,
                finetune_encoder=False,
                encoder_lr=0.0,  # unused: members share one frozen encoder
                started=time.perf_counter(),
                **single_kwargs,
            )
        )
    router = RouteT2IRouter.from_members(trained)
    summaries = [m.training_summary or {} for m in trained]
    router.training_summary = {
        "members": len(trained),
        "best_val_spearman": mean_of_finite([s.get("best_val_spearman") for s in summaries]),
        "best_val_loss": mean_of_finite([s.get("best_val_loss") for s in summaries]),
        "n_train": len(train),
        "seconds": round(time.perf_counter() - started, 3),
        "hyperparameters": summaries[0].get("hyperparameters", {}) | {"seed": seed, "val_fold": val_fold},
        "config": router.config.to_dict(),
        "member_summaries": summaries,
    }
    log(f"done: ensemble of {len(trained)} members ({router.training_summary['seconds']:.1f} s)")
    return router


def mean_of_finite(values: Sequence[float | None]) -> float | None:
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None

"""Training the RouteT2I router: the entry point (`train_router`) and the training summary file.

Labels are recomputed from the raw qualities with PRS statistics fitted on the training examples
(never on held-out data; `batches`). The loss (`losses`) has one term per head, one on PRŜ vs PRS and a
pairwise ranking term on PRŜ. The epoch loop (`train_loop`) keeps
the epoch with the best validation Spearman correlation of PRŜ and PRS (validation split by prompt).
By default the encoder is frozen and token states are computed once, so an epoch is milliseconds.

With `RouterConfig.members` = M > 1 (the default) the router is a cross-validated ensemble: the
training prompts are split into folds once, member j holds out fold j for its early stopping and
learns from the rest with its own initialisation seed, and the M heads are averaged. Every prompt
trains M − 1 or M members, and no single noisy validation split decides the model.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from router_model.encoder import TextEncoder, TokenStates
from router_model.lab.batches import resolve_stats
from router_model.lab.data import DatasetError, RoutingExample, check_consistent
from router_model.lab.ensemble import train_ensemble
from router_model.lab.prior_fit import fit_prior
from router_model.lab.residual_scale import choose_residual_scale
from router_model.lab.train_loop import fit_single
from router_model.model import RouterConfig, RouteT2IRouter
from router_model.prs import PRSStats


def train_router(
    train: Sequence[RoutingExample],
    *,
    config: RouterConfig | None = None,
    stats: PRSStats | None = None,
    val_fraction: float = 0.15,
    epochs: int = 200,
    lr: float = 1e-3,
    batch_size: int = 32,
    patience: int = 20,
    seed: int = 0,
    device: str = "auto",
    finetune_encoder: bool = False,
    encoder: TextEncoder | None = None,
    token_states: TokenStates | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    rank_weight: float = 1.0,
    weight_decay: float = 1e-2,
    encoder_lr: float = 2e-5,
    select_by: str = "loss",
    val_fold: int = 0,
    scale: bool = True,
) -> RouteT2IRouter:
    """Train a router on `train` (one model pair, one metric set) and return it in eval mode.

    `token_states` (aligned with `train`) skips encoding, so an evaluator can encode a dataset once
    and train many folds. The best epoch by validation loss (`select_by="loss"`, the default) or by
    validation Spearman(PRŜ, PRS) is restored; the history is in `router.training_summary`. With
    `config.members` = M > 1 each member j is trained as a single head on validation fold
    `val_fold + j` and seed `seed + j` (see the module docstring). With `finetune_encoder` the
    encoder is trained too (in place, at `encoder_lr`) and saved with the checkpoint; that needs
    `members=1` (one encoder cannot be fine-tuned for several heads). With `scale` (the default), a head
    with thousands of training prompts counts its budget in prompts seen, not epochs (`schedule`).
    """
    started = time.perf_counter()
    emit = log or (lambda _line: None)
    train = list(train)
    if not train:
        raise DatasetError("no training examples")
    check_consistent(train, "training examples")
    if token_states is not None and len(token_states) != len(train):
        raise ValueError(f"token_states holds {len(token_states)} prompts but there are {len(train)} examples")
    if finetune_encoder and token_states is not None:
        raise ValueError("finetune_encoder needs the prompts, not precomputed token_states; pass one or the other")
    if select_by not in ("spearman", "loss"):
        raise ValueError(f"select_by must be 'spearman' or 'loss', got {select_by!r}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    config, token_states = with_prior(train, config, stats, encoder, token_states, finetune_encoder)
    members = config.members
    if members > 1:
        if finetune_encoder:
            raise ValueError(
                f"finetune_encoder needs a single-head router, but RouterConfig.members is {members}; "
                "set members=1 to fine-tune the encoder"
            )
        router = train_ensemble(
            train,
            members=members,
            config=config,
            stats=stats,
            encoder=encoder,
            token_states=token_states,
            device=device,
            seed=seed,
            val_fraction=val_fraction,
            val_fold=val_fold,
            log=emit,
            started=started,
            single_kwargs=dict(
                epochs=epochs,
                lr=lr,
                batch_size=batch_size,
                patience=patience,
                progress=progress,
                rank_weight=rank_weight,
                weight_decay=weight_decay,
                select_by=select_by,
                scale=scale,
            ),
        )
    else:
        router = fit_single(
            train,
            config=config,
            stats=stats,
            val_fraction=val_fraction,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            patience=patience,
            seed=seed,
            device=device,
            finetune_encoder=finetune_encoder,
            encoder=encoder,
            token_states=token_states,
            progress=progress,
            log=emit,
            rank_weight=rank_weight,
            weight_decay=weight_decay,
            encoder_lr=encoder_lr,
            select_by=select_by,
            val_fold=val_fold,
            started=started,
            scale=scale,
        )
    if config.prior is not None and config.residual_scale_auto:
        choose_and_apply_residual_scale(router, emit)
    return router


def choose_and_apply_residual_scale(router: RouteT2IRouter, log: Callable[[str], None]) -> None:
    """Set γ by `residual_scale.choose_residual_scale` on the run's validation folds; keep it when none."""
    summary = router.training_summary or {}
    choice = choose_residual_scale(summary.get("member_summaries") or [summary])
    if choice is None:
        log(f"tower weight γ kept at {router.config.residual_scale}: no validation fold to choose it on")
        return
    gamma, record = choice
    router.set_residual_scale(gamma)
    summary["residual_scale_selection"] = record
    summary["config"] = router.config.to_dict()
    log(f"tower weight γ = {gamma} (validation Spearman by γ: {record['mean_val_spearman']})")


def with_prior(
    train: list[RoutingExample],
    config: RouterConfig | None,
    stats: PRSStats | None,
    encoder: TextEncoder | None,
    token_states: TokenStates | None,
    finetune_encoder: bool,
) -> tuple[RouterConfig, TokenStates | None]:
    """The config with its cheap-feature prior fitted on `train` (when `use_prior` and none is given yet).

    The prior reads the encoder's real-token count, so the prompts are tokenised (or encoded once, when the
    encoder is frozen: the token states are then handed on to training instead of being computed again)."""
    stats = resolve_stats(train, stats, config)
    config = dataclasses.replace(config) if config is not None else RouterConfig(metrics=list(stats.metrics))
    if not config.use_prior or config.prior is not None:
        return config, token_states
    prompts = [ex.prompt for ex in train]
    if token_states is None:
        encoder = encoder or TextEncoder(config.encoder, max_length=config.max_length)
        if finetune_encoder:
            counts = encoder.tokenize(prompts)["attention_mask"].sum(1).cpu().numpy()
        else:
            token_states = encoder.encode(prompts)
    if token_states is not None:
        counts = token_states.mask.sum(1).numpy()
    prior = fit_prior(train, counts, stats, alpha=config.prior_alpha, multi_metric=config.multi_metric)
    if prior is None:  # the cheap features predict nothing here: the paper's tower alone
        config.use_prior = False
    else:
        config.prior = prior.to_dict()
    return config, token_states


def save_training_summary(summary: dict[str, Any] | RouteT2IRouter, path: str | Path) -> Path:
    """Write the training summary (history, best epoch, hyperparameters) as JSON."""
    if isinstance(summary, RouteT2IRouter):
        if summary.training_summary is None:
            raise ValueError("this router has no training summary (it was not trained by train_router)")
        summary = summary.training_summary
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return path

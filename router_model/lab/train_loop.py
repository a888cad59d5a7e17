"""One router head trained to its best epoch: the epoch loop, validation, early stopping, the summary."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from router_model.encoder import TextEncoder, TokenStates, pick_device
from router_model.lab.batches import (
    Batches,
    batch_logits,
    check_periods,
    prs_targets,
    resolve_stats,
    single_thread,
    validation_split,
)
from router_model.lab.data import RoutingExample
from router_model.lab.losses import router_loss, spearman
from router_model.lab.residual_scale import cross_half_table, validation_halves
from router_model.lab.schedule import schedule_for
from router_model.model import RouterConfig, RouteT2IRouter
from router_model.prior import FeaturePrior
from router_model.prs import PRSStats


def validate(
    router: RouteT2IRouter,
    data: Batches,
    encoder: TextEncoder | None,
    device: torch.device,
    batch_size: int,
    rank_weight: float,
    piece: int | None = None,
    residual_scale: float = 1.0,
) -> tuple[float, float, np.ndarray]:
    """(validation loss, Spearman of PRŜ vs PRS, the logits [n, k]), the tower weighted by `residual_scale` over
    the prior."""
    router.eval()
    losses, preds, logit_parts = [], [], []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            index = list(range(start, min(start + batch_size, len(data))))
            x = data.inputs(index, encoder, device)
            logits = batch_logits(router, x, piece, data.features_of(index), residual_scale)
            prs_hat = torch.sigmoid(logits) @ router.metric_weights
            loss = router_loss(
                logits,
                prs_hat,
                data.distances[index],
                data.prs[index],
                multi_metric=router.config.multi_metric,
                rank_weight=rank_weight,
            )
            losses.append(float(loss) * len(index))
            preds.append(prs_hat.cpu().numpy())
            logit_parts.append(logits.cpu().numpy())
    return sum(losses) / len(data), spearman(np.concatenate(preds), data.prs.cpu().numpy()), np.concatenate(logit_parts)


def fit_single(
    train: list[RoutingExample],
    *,
    config: RouterConfig | None,
    stats: PRSStats | None,
    val_fraction: float,
    epochs: int,
    lr: float,
    batch_size: int,
    patience: int,
    seed: int,
    device: str,
    finetune_encoder: bool,
    encoder: TextEncoder | None,
    token_states: TokenStates | None,
    progress: bool,
    log: Callable[[str], None],
    rank_weight: float,
    weight_decay: float,
    encoder_lr: float,
    select_by: str,
    val_fold: int,
    started: float,
    scale: bool = True,
) -> RouteT2IRouter:
    """Train one head (arguments as `train.train_router`, already checked there) and return it in eval mode."""
    torch.manual_seed(seed)
    run_device = pick_device(device)
    stats = resolve_stats(train, stats, config)
    config = dataclasses.replace(config) if config is not None else RouterConfig(metrics=list(stats.metrics))
    config.metrics, config.prs_stats = list(stats.metrics), stats.to_dict()

    if encoder is None and (token_states is None or finetune_encoder):
        encoder = TextEncoder(config.encoder, device=str(run_device), max_length=config.max_length)
    if encoder is not None:
        config.encoder, config.max_length = encoder.name, encoder.max_length
    width = int(token_states.states.shape[-1]) if token_states is not None else encoder.hidden_size
    if config.input_dim is not None and config.input_dim != width:
        raise ValueError(f"RouterConfig.input_dim is {config.input_dim} but the encoder's token states have {width}")
    config.input_dim = width
    config.encoder_finetuned = finetune_encoder
    if token_states is None and not finetune_encoder:
        token_states = encoder.encode([ex.prompt for ex in train])

    distances, prs = prs_targets(train, stats)
    fit_idx, val_idx = validation_split(train, val_fraction, seed, fold=val_fold)
    plan = schedule_for(len(fit_idx), epochs, patience, batch_size, lr, scale and not finetune_encoder)

    prior_features = None
    if config.prior is not None:
        text = FeaturePrior.from_dict(config.prior).text_features([ex.prompt for ex in train])
        prior_features = torch.from_numpy(text).to(run_device)

    def batches_for(index: list[int]) -> Batches:
        return Batches(
            prompts=[train[i].prompt for i in index],
            distances=torch.tensor(distances[index], dtype=torch.float32, device=run_device),
            prs=torch.tensor(prs[index], dtype=torch.float32, device=run_device),
            states=token_states,
            rows=torch.as_tensor(index, dtype=torch.long),
            features=prior_features[index] if prior_features is not None else None,
        )

    fit_data, val_data = batches_for(fit_idx), batches_for(val_idx) if val_idx else None
    router = RouteT2IRouter(config, encoder=encoder).to(run_device)
    groups: list[dict[str, Any]] = [{"params": list(router.parameters()), "lr": plan.lr}]
    if finetune_encoder:
        encoder.model.requires_grad_(True)
        groups.append({"params": [p for p in encoder.model.parameters() if p.requires_grad], "lr": encoder_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)

    from tqdm.auto import tqdm

    history: list[dict[str, float]] = []
    choose_gamma = config.prior is not None and config.residual_scale_auto and val_data is not None
    val_logits_by_check: list[np.ndarray] = []  # for residual_scale.cross_half_table
    best: dict[str, Any] = {"check": 0, "epoch": 0, "key": (-math.inf, -math.inf), "state": None, "encoder": None}
    log(
        f"training router: {len(fit_idx)} train / {len(val_idx)} validation prompts, metrics {config.metrics}, "
        f"device {run_device}, {'fine-tuned' if finetune_encoder else 'frozen'} encoder {config.encoder}"
    )
    with single_thread(run_device.type == "cpu" and not finetune_encoder):
        periods = check_periods(len(fit_data), plan.batch_size, generator, plan.epochs, plan.checks_per_epoch)
        bar = tqdm(periods, total=plan.epochs * plan.checks_per_epoch, desc="train router", disable=not progress,
                   leave=False)  # fmt: skip
        for check, (epoch, chunks) in enumerate(bar, 1):
            router.train()
            if finetune_encoder:
                encoder.model.train()
            total, seen = 0.0, 0
            for chunk in chunks:
                index = chunk.tolist()
                seen += len(index)
                x = fit_data.inputs(index, encoder if finetune_encoder else None, run_device)
                logits = batch_logits(router, x, plan.piece, fit_data.features_of(index))
                prs_hat = torch.sigmoid(logits) @ router.metric_weights
                loss = router_loss(
                    logits,
                    prs_hat,
                    fit_data.distances[index],
                    fit_data.prs[index],
                    multi_metric=config.multi_metric,
                    rank_weight=rank_weight,
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(index)
            if finetune_encoder:
                encoder.model.eval()
            record = {"epoch": epoch, "train_loss": total / seen}
            if val_data is not None:
                record["val_loss"], record["val_spearman"], val_logits = validate(
                    router, val_data, encoder if finetune_encoder else None, run_device, 256, rank_weight, plan.piece
                )
                if choose_gamma:
                    val_logits_by_check.append(val_logits)
                rho = record["val_spearman"]
                rho = rho if not math.isnan(rho) else -math.inf
                key = (rho, -record["val_loss"]) if select_by == "spearman" else (-record["val_loss"], rho)
            else:
                key = (-math.inf, -record["train_loss"])
            improved = key > best["key"]
            if improved:
                best.update(check=check, epoch=epoch, key=key, state=copy.deepcopy(router.state_dict()))
                if finetune_encoder:
                    best["encoder"] = copy.deepcopy(encoder.model.state_dict())
            history.append(record)
            log(
                f"epoch {epoch:3g}  train_loss {record['train_loss']:.4f}"
                + (
                    f"  val_loss {record['val_loss']:.4f}  val_spearman {record['val_spearman']:+.3f}"
                    if val_data is not None
                    else ""
                )
                + ("  *" if improved else "")
            )
            bar.set_postfix({k: round(v, 4) for k, v in record.items() if k != "epoch"})
            if check - best["check"] >= plan.patience and val_data is not None:
                unit = "epochs" if plan.checks_per_epoch == 1 else "checks"
                log(f"early stop: no validation improvement for {plan.patience} {unit} (best epoch {best['epoch']})")
                break
        bar.close()

    router.load_state_dict(best["state"])
    if finetune_encoder:
        encoder.model.load_state_dict(best["encoder"])
        encoder.model.eval().requires_grad_(False)
    router.eval()
    best_record = history[best["check"] - 1]
    by_scale, picked = None, None
    if choose_gamma:  # for residual_scale.py: every γ scored on the half of the fold that did not pick the check
        prior_logits = validate(
            router, val_data, encoder if finetune_encoder else None, run_device, 256, rank_weight, plan.piece, 0.0
        )[2]
        table, picked = cross_half_table(
            prior_logits,
            val_logits_by_check,
            router.metric_weights.cpu().numpy(),
            val_data.prs.cpu().numpy(),
            validation_halves(val_data.prompts),
        )
        by_scale = {gamma: finite(value) for gamma, value in table.items()}
    router.training_summary = {
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "best_val_spearman": finite(best_record.get("val_spearman")),
        "best_val_loss": best_record.get("val_loss"),
        "n_train": len(fit_idx),
        "n_val": len(val_idx),
        "val_spearman_by_residual_scale": by_scale,
        "residual_scale_checks_by_half": picked,
        "seconds": round(time.perf_counter() - started, 3),
        "hyperparameters": {
            "lr": lr,
            "batch_size": batch_size,
            "epochs": epochs,
            "patience": patience,
            "seed": seed,
            "val_fraction": val_fraction,
            "rank_weight": rank_weight,
            "weight_decay": weight_decay,
            "finetune_encoder": finetune_encoder,
            "select_by": select_by,
            "val_fold": val_fold,
            "schedule": dataclasses.asdict(plan),
        },
        "config": config.to_dict(),
        "history": [{k: finite(v) for k, v in record.items()} for record in history],
    }
    log(
        f"done: best epoch {best['epoch']} of {len(history)}"
        + (f", validation Spearman {best_record['val_spearman']:+.3f}" if val_data is not None else "")
        + f" ({router.training_summary['seconds']:.1f} s)"
    )
    return router


def finite(value: float | None) -> float | None:
    """JSON has no NaN: a Spearman that is undefined (constant predictions or labels) becomes null."""
    return None if value is None or math.isnan(value) else value

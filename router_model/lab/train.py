"""Training loop for the RouteT2I router.

Labels are recomputed from the raw qualities with PRS statistics fitted on the training examples
(never on held-out data). The loss has one term per head (D̂_i vs D_i), one on PRŜ vs PRS and a
pairwise ranking term on PRŜ, because the router is used to *rank* prompts (the top-ρ by 1 − PRŜ go
to the cloud), so getting the order right matters more than calibrated values. Early stopping keeps
the epoch with the best validation Spearman correlation of PRŜ and PRS (validation split by prompt).
By default the encoder is frozen and token states are computed once, so an epoch is milliseconds.

With `RouterConfig.members` = M > 1 (the default) the router is a cross-validated ensemble: the
training prompts are split into folds once, member j holds out fold j for its early stopping and
learns from the rest with its own initialisation seed, and the M heads are averaged. Every prompt
trains M − 1 or M members, and no single noisy validation split decides the model.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from router_model.encoder import TextEncoder, TokenStates, pick_device
from router_model.lab.data import DatasetError, RoutingExample, check_consistent, kfold_splits, quality_arrays
from router_model.model import RouterConfig, RouteT2IRouter
from router_model.prs import PRSStats, fit_prs_stats, normalized_distances, prs_from_distances

# ---------------------------------------------------------------- metrics and labels


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation with tie correction; nan when either side is constant."""
    ra, rb = rankdata(a), rankdata(b)
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


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


# ---------------------------------------------------------------- loss


def pairwise_rank_loss(prs_hat: torch.Tensor, prs: torch.Tensor, margin: float = 0.02) -> torch.Tensor:
    """Logistic loss on every ordered pair whose true PRS differs by more than `margin`, weighted by the gap."""
    gap = prs.unsqueeze(1) - prs.unsqueeze(0)  # [i, j] > 0: i should score above j
    weight = gap.clamp_min(0.0) * (gap > margin)
    if weight.sum() <= 0:
        return prs_hat.sum() * 0.0
    score = torch.logit(prs_hat.clamp(1e-6, 1 - 1e-6))
    loss = F.softplus(-(score.unsqueeze(1) - score.unsqueeze(0)))
    return (loss * weight).sum() / weight.sum()


def router_loss(
    head_logits: torch.Tensor,
    prs_hat: torch.Tensor,
    distances: torch.Tensor,
    prs: torch.Tensor,
    *,
    multi_metric: bool,
    rank_weight: float = 1.0,
) -> torch.Tensor:
    """BCE on every head (multi-metric) + BCE on PRŜ + `rank_weight` × pairwise ranking loss on PRŜ."""
    loss = F.binary_cross_entropy(prs_hat.clamp(1e-6, 1 - 1e-6), prs)
    if multi_metric:
        loss = loss + F.binary_cross_entropy_with_logits(head_logits, distances)
    if rank_weight > 0:
        loss = loss + rank_weight * pairwise_rank_loss(prs_hat, prs)
    return loss


# ---------------------------------------------------------------- training


@contextmanager
def _single_thread(enabled: bool) -> Iterator[None]:
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
class _Batches:
    """Token states (cached) or prompts (fine-tuning) with their labels, on the training device."""

    prompts: list[str]
    distances: torch.Tensor
    prs: torch.Tensor
    states: TokenStates | None

    def __len__(self) -> int:
        return len(self.prompts)

    def inputs(self, index: Sequence[int], encoder: TextEncoder | None, device: torch.device) -> TokenStates:
        if self.states is not None:
            part = self.states.subset(index)
            return TokenStates(part.states.to(device), part.mask.to(device))
        assert encoder is not None
        return encoder.forward_tokens(encoder.tokenize([self.prompts[i] for i in index]))


def _resolve_stats(train: Sequence[RoutingExample], stats: PRSStats | None, config: RouterConfig | None) -> PRSStats:
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


def _evaluate(
    router: RouteT2IRouter,
    data: _Batches,
    encoder: TextEncoder | None,
    device: torch.device,
    batch_size: int,
    rank_weight: float,
) -> tuple[float, float]:
    """(validation loss, Spearman of PRŜ vs PRS)."""
    router.eval()
    losses, preds = [], []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            index = list(range(start, min(start + batch_size, len(data))))
            x = data.inputs(index, encoder, device)
            logits = router.logits(x.states, x.mask)
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
    return sum(losses) / len(data), spearman(np.concatenate(preds), data.prs.cpu().numpy())


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
) -> RouteT2IRouter:
    """Train a router on `train` (one model pair, one metric set) and return it in eval mode.

    `token_states` (aligned with `train`) skips encoding, so an evaluator can encode a dataset once
    and train many folds. The best epoch by validation loss (`select_by="loss"`, the default) or by
    validation Spearman(PRŜ, PRS) is restored; the history is in `router.training_summary`. With
    `config.members` = M > 1 each member j is trained as a single head on validation fold
    `val_fold + j` and seed `seed + j` (see the module docstring). With `finetune_encoder` the
    encoder is trained too (in place, at `encoder_lr`) and saved with the checkpoint; that needs
    `members=1` (one encoder cannot be fine-tuned for several heads).
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
    members = config.members if config is not None else RouterConfig.members
    if members > 1:
        if finetune_encoder:
            raise ValueError(
                f"finetune_encoder needs a single-head router, but RouterConfig.members is {members}; "
                "set members=1 to fine-tune the encoder"
            )
        return _train_ensemble(
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
            ),
        )

    torch.manual_seed(seed)
    run_device = pick_device(device)
    stats = _resolve_stats(train, stats, config)
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

    def batches_for(index: list[int]) -> _Batches:
        return _Batches(
            prompts=[train[i].prompt for i in index],
            distances=torch.tensor(distances[index], dtype=torch.float32, device=run_device),
            prs=torch.tensor(prs[index], dtype=torch.float32, device=run_device),
            states=token_states.subset(index) if token_states is not None else None,
        )

    fit_data, val_data = batches_for(fit_idx), batches_for(val_idx) if val_idx else None
    router = RouteT2IRouter(config, encoder=encoder).to(run_device)
    groups: list[dict[str, Any]] = [{"params": list(router.parameters()), "lr": lr}]
    if finetune_encoder:
        encoder.model.requires_grad_(True)
        groups.append({"params": [p for p in encoder.model.parameters() if p.requires_grad], "lr": encoder_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)

    from tqdm.auto import tqdm

    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"epoch": 0, "key": (-math.inf, -math.inf), "state": None, "encoder": None}
    emit(
        f"training router: {len(fit_idx)} train / {len(val_idx)} validation prompts, metrics {config.metrics}, "
        f"device {run_device}, {'fine-tuned' if finetune_encoder else 'frozen'} encoder {config.encoder}"
    )
    with _single_thread(run_device.type == "cpu" and not finetune_encoder):
        bar = tqdm(range(1, epochs + 1), desc="train router", disable=not progress, leave=False)
        for epoch in bar:
            router.train()
            if finetune_encoder:
                encoder.model.train()
            total = 0.0
            for chunk in torch.randperm(len(fit_data), generator=generator).split(batch_size):
                index = chunk.tolist()
                x = fit_data.inputs(index, encoder if finetune_encoder else None, run_device)
                logits = router.logits(x.states, x.mask)
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
            record = {"epoch": epoch, "train_loss": total / len(fit_data)}
            if val_data is not None:
                record["val_loss"], record["val_spearman"] = _evaluate(
                    router, val_data, encoder if finetune_encoder else None, run_device, 256, rank_weight
                )
                rho = record["val_spearman"]
                rho = rho if not math.isnan(rho) else -math.inf
                key = (rho, -record["val_loss"]) if select_by == "spearman" else (-record["val_loss"], rho)
            else:
                key = (-math.inf, -record["train_loss"])
            improved = key > best["key"]
            if improved:
                best.update(epoch=epoch, key=key, state=copy.deepcopy(router.state_dict()))
                if finetune_encoder:
                    best["encoder"] = copy.deepcopy(encoder.model.state_dict())
            history.append(record)
            emit(
                f"epoch {epoch:3d}  train_loss {record['train_loss']:.4f}"
                + (
                    f"  val_loss {record['val_loss']:.4f}  val_spearman {record['val_spearman']:+.3f}"
                    if val_data is not None
                    else ""
                )
                + ("  *" if improved else "")
            )
            bar.set_postfix({k: round(v, 4) for k, v in record.items() if k != "epoch"})
            if epoch - best["epoch"] >= patience and val_data is not None:
                emit(f"early stop: no validation improvement for {patience} epochs (best epoch {best['epoch']})")
                break
        bar.close()

    router.load_state_dict(best["state"])
    if finetune_encoder:
        encoder.model.load_state_dict(best["encoder"])
        encoder.model.eval().requires_grad_(False)
    router.eval()
    best_record = history[best["epoch"] - 1]
    router.training_summary = {
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "best_val_spearman": _finite(best_record.get("val_spearman")),
        "best_val_loss": best_record.get("val_loss"),
        "n_train": len(fit_idx),
        "n_val": len(val_idx),
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
        },
        "config": config.to_dict(),
        "history": [{k: _finite(v) for k, v in record.items()} for record in history],
    }
    emit(
        f"done: best epoch {best['epoch']} of {len(history)}"
        + (f", validation Spearman {best_record['val_spearman']:+.3f}" if val_data is not None else "")
        + f" ({router.training_summary['seconds']:.1f} s)"
    )
    return router


def _train_ensemble(
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
    stats = _resolve_stats(train, stats, config)
    single = dataclasses.replace(config or RouterConfig(metrics=list(stats.metrics)), members=1)
    if token_states is None:
        if encoder is None:
            encoder = TextEncoder(single.encoder, device=str(pick_device(device)), max_length=single.max_length)
        token_states = encoder.encode([ex.prompt for ex in train])
    trained = []
    for j in range(members):
        log(f"ensemble member {j + 1}/{members}")
        trained.append(
            train_router(
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
                **single_kwargs,
            )
        )
    router = RouteT2IRouter.from_members(trained)
    summaries = [m.training_summary or {} for m in trained]
    router.training_summary = {
        "members": len(trained),
        "best_val_spearman": _mean_of_finite([s.get("best_val_spearman") for s in summaries]),
        "best_val_loss": _mean_of_finite([s.get("best_val_loss") for s in summaries]),
        "n_train": len(train),
        "seconds": round(time.perf_counter() - started, 3),
        "hyperparameters": summaries[0].get("hyperparameters", {}) | {"seed": seed, "val_fold": val_fold},
        "config": router.config.to_dict(),
        "member_summaries": summaries,
    }
    log(f"done: ensemble of {len(trained)} members ({router.training_summary['seconds']:.1f} s)")
    return router


def _mean_of_finite(values: Sequence[float | None]) -> float | None:
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def _finite(value: float | None) -> float | None:
    """JSON has no NaN: a Spearman that is undefined (constant predictions or labels) becomes null."""
    return None if value is None or math.isnan(value) else value


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

"""The evaluation protocol: every routing method scored out of fold, ΔP summarised per method.

Every learned method is trained per fold on the training prompts only; ΔP (see `delta_p`) is computed
per fold on its test prompts, then averaged (± std across folds). Modes: k-fold CV, optionally
repeated with several split seeds, or one train/test split; a given checkpoint can be evaluated as is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router_model.encoder import DEFAULT_ENCODER, TextEncoder, TokenStates
from router_model.lab.baselines import (
    ABLATIONS,
    BASELINES,
    ROUTERS,
    VARIANTS,
    BaseRouter,
    RouteT2IMethod,
    make_router,
    torch_threads,
)
from router_model.lab.baselines_extra import TRAINING_FREE
from router_model.lab.data import RoutingExample, check_consistent, kfold_splits, quality_arrays, stable_seed
from router_model.lab.delta_p import (
    TARGETS,
    cloud_call_reduction,
    curve_auc,
    delta_p_curve,
    paired_bootstrap,
    rho_grid,
    rho_key,
    route_quality,
)
from router_model.lab.training_sets import check_training_metrics, single_pair_view

NOT_BASELINES = {"oracle", "routet2i", "checkpoint", *ABLATIONS, *VARIANTS}


# ---------------------------------------------------------------- scoring methods per fold


def prompt_tiebreak(examples: Sequence[RoutingExample]) -> np.ndarray:
    return np.array([stable_seed(ex.prompt) for ex in examples], dtype=np.int64)


def default_methods(ablations: bool = False, include_routet2i: bool | None = None) -> list[str]:
    """The baselines, RouteT2I when its code is present, and its ablations when asked."""
    if include_routet2i is None:
        try:
            import router_model.lab.train  # noqa: F401
            import router_model.model  # noqa: F401

            include_routet2i = True
        except ImportError:
            include_routet2i = False
    methods = list(BASELINES)
    if include_routet2i:
        methods.append("routet2i")
        if ablations:
            methods += ABLATIONS
    return methods


def encode_examples(
    examples: Sequence[RoutingExample],
    encoder: str | TextEncoder = DEFAULT_ENCODER,
    cache_dir: str | Path | None = None,
    log: Callable[..., Any] = print,
) -> TokenStates:
    """Token states of all prompts, each distinct prompt once (then sliced per fold with `TokenStates.subset`);
    with `cache_dir`, read from / written to the on-disk cache of `state_cache`."""
    from router_model.lab.state_cache import cached_token_states

    return cached_token_states([ex.prompt for ex in examples], cache_dir, encoder, log=log)


def out_of_fold_scores(
    examples: Sequence[RoutingExample],
    splits: Sequence[tuple[Sequence[int], Sequence[int]]],
    factories: dict[str, Callable[[], BaseRouter]],
    states: TokenStates | None,
    log: Callable[..., Any] = print,
    seconds: dict[str, list[float]] | None = None,
) -> dict[str, list[np.ndarray]]:
    """For each method and split: a fresh router fitted on the train part, scores on the test part.

    Runs torch on one thread: the routers are small, and intra-op threads cost more than they save
    (on a busy 2-core machine, RouteT2I trains over ten times faster this way). `seconds`, when given,
    receives each method's wall time (fit + scoring) per split."""
    with torch_threads(1):
        return _out_of_fold_scores(examples, splits, factories, states, log, seconds if seconds is not None else {})


def _out_of_fold_scores(
    examples: Sequence[RoutingExample],
    splits: Sequence[tuple[Sequence[int], Sequence[int]]],
    factories: dict[str, Callable[[], BaseRouter]],
    states: TokenStates | None,
    log: Callable[..., Any],
    seconds: dict[str, list[float]],
) -> dict[str, list[np.ndarray]]:
    scores: dict[str, list[np.ndarray]] = {name: [] for name in factories}
    for fold, (train_idx, test_idx) in enumerate(splits):
        train = [examples[i] for i in train_idx]
        one_pair = single_pair_view(train)  # what the pair-only methods train on when the data mixes pairs
        test = [examples[i] for i in test_idx]
        train_states = states.subset(train_idx) if states is not None else None
        test_states = states.subset(test_idx) if states is not None else None
        for name, factory in factories.items():
            log(f"fold {fold + 1}/{len(splits)}: {name}")
            started = time.perf_counter()
            router = factory()
            router.fit(train if getattr(router, "uses_model_ids", False) else one_pair, train_states)
            values = np.asarray(router.cloud_advantage(test, test_states), dtype=np.float64)
            if values.shape != (len(test),):
                raise RuntimeError(f"{name} returned {values.shape} scores for {len(test)} prompts")
            scores[name].append(values)
            seconds.setdefault(name, []).append(round(time.perf_counter() - started, 3))
    return scores


# ---------------------------------------------------------------- summaries


def _summarise(
    fold_scores: list[np.ndarray],
    folds_q: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    rhos: np.ndarray,
    dims: list[str],
) -> dict[str, Any]:
    curves = np.array(
        [delta_p_curve(s, qe, qc, rhos, tb) for s, (qe, qc, tb) in zip(fold_scores, folds_q, strict=True)]
    )
    mean, std = curves.mean(axis=0), curves.std(axis=0)
    aucs = [curve_auc(c, rhos) for c in curves]
    per_dim = np.mean(
        [route_quality(s, qe, qc, 0.5, tb) for s, (qe, qc, tb) in zip(fold_scores, folds_q, strict=True)], axis=0
    )
    return {
        "delta_p": {rho_key(r): float(v) for r, v in zip(rhos, mean, strict=True)},
        "delta_p_std": {rho_key(r): float(v) for r, v in zip(rhos, std, strict=True)},
        "cloud_call_reduction": {str(t): cloud_call_reduction(mean, rhos, t) for t in TARGETS},
        "cloud_call_reduction_std": {
            str(t): float(np.nanstd([cloud_call_reduction(c, rhos, t) for c in curves]))
            if any(not np.isnan(cloud_call_reduction(c, rhos, t)) for c in curves)
            else float("nan")
            for t in TARGETS
        },
        "auc": curve_auc(mean, rhos),
        "auc_std": float(np.std(aucs)),
        "per_dimension": {d: float(v) for d, v in zip(dims, per_dim, strict=True)},
    }


def bootstrap_reference(names: Sequence[str], methods: dict[str, Any]) -> str | None:
    """The method the bootstraps test: RouteT2I (trained or a checkpoint), else the best learned method."""
    for name in ("routet2i", "checkpoint"):
        if name in names:
            return name
    learned = [m for m in names if m not in NOT_BASELINES and m not in TRAINING_FREE]
    return max(learned, key=lambda m: methods[m]["delta_p"]["0.5"]) if learned else None


def _bootstrap_sections(
    methods: dict[str, Any],
    pooled: dict[str, np.ndarray],
    q_edge: np.ndarray,
    q_cloud: np.ndarray,
    tiebreak: np.ndarray,
    rhos: np.ndarray,
    resamples: int,
    seed: int,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Paired bootstraps of the reference against the best other baseline and against `prompt_length`."""
    reference = bootstrap_reference(list(pooled), methods)
    baselines = [m for m in pooled if m not in NOT_BASELINES and m != reference]
    if reference is None or not baselines or resamples <= 0:
        return None, None

    def against(other: str, why: str) -> dict[str, Any]:
        result = paired_bootstrap(
            pooled[reference], pooled[other], q_edge, q_cloud, rhos, tiebreak, resamples=resamples, seed=seed
        )
        return {
            "method": reference,
            "baseline": other,
            "why": why,
            "pooled": "out-of-fold scores",
            "seed": seed,
        } | result

    best = max(baselines, key=lambda m: methods[m]["delta_p"]["0.5"])
    other = "" if reference in ("routet2i", "checkpoint") else "other "
    length = against("prompt_length", "prompt length") if "prompt_length" in baselines else None
    return against(best, f"the best {other}baseline by ΔP(50%)"), length


# ---------------------------------------------------------------- the entry point


def evaluate(
    examples: Sequence[RoutingExample],
    *,
    methods: Sequence[str] | None = None,
    folds: int = 5,
    seed: int = 0,
    train_examples: Sequence[RoutingExample] | None = None,
    router_dir: str | Path | None = None,
    ablations: bool = False,
    encoder: str | TextEncoder = DEFAULT_ENCODER,
    states: TokenStates | None = None,
    rho_step: float = 0.05,
    bootstrap: int = 1000,
    routet2i_kwargs: dict[str, Any] | None = None,
    repeats: int = 1,
    log: Callable[..., Any] | None = print,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate routing methods on `examples`.

    `repeats` > 1 repeats the k-fold CV with split seeds seed, seed+1, …: means and spreads are then over
    all repeats × folds (one k-fold split of a few hundred noisy prompts swings ΔP by several points);
    the paired bootstrap uses the first repeat's out-of-fold scores.

    Modes: k-fold CV over `examples` (default); `train_examples` given → train on those, test on
    `examples` (one split; the training data may hold several model pairs and other metrics than the
    test pair, but one metric list: see `training_sets`); `train_examples=[]` → no training at all, only
    the methods of `TRAINING_FREE` and a checkpoint; `router_dir` given → also evaluate that checkpoint
    as method "checkpoint" (never trained; scored with its own encoder; only meaningful on prompts it
    was not trained on). `states` are precomputed token states of the evaluated prompts (of
    train_examples + examples in the train/test mode). Names of methods: `baselines.ROUTERS` plus
    "checkpoint". `cache_dir` keeps the encoder's token states on disk (`state_cache`): a re-run on the
    same prompts and encoder encodes nothing. `protocols` wraps the train/test and checkpoint-only modes for
    several training sets.
    """
    log = log or (lambda *_a, **_k: None)
    examples = list(examples)
    check_consistent(examples, "evaluation data")
    if train_examples is not None:
        train_examples = list(train_examples)
        check_training_metrics(train_examples)
    names = list(methods) if methods is not None else default_methods(ablations)
    if router_dir is not None and "checkpoint" not in names:
        names.append("checkpoint")
    if len(set(names)) != len(names):
        raise ValueError(f"methods listed twice: {names}")
    unknown = [n for n in names if n not in ROUTERS and n != "checkpoint"]
    if unknown:
        raise ValueError(f"unknown routing method {unknown[0]!r}; choose from {', '.join(ROUTERS)}")
    untrained = [n for n in names if n not in TRAINING_FREE and n != "checkpoint"]
    if train_examples is not None and not train_examples and untrained:
        raise ValueError(f"no training data for {', '.join(untrained)}; only {', '.join(TRAINING_FREE)} need none")
    rhos = rho_grid(rho_step)

    everything = (train_examples or []) + examples
    needs_states = any(n not in {"random", "noun_count", "oracle", "checkpoint"} for n in names)
    if states is None and needs_states:
        states = encode_examples(everything, encoder, cache_dir, log=log)
    if states is not None and len(states) != len(everything):
        raise ValueError(f"{len(states)} token-state rows for {len(everything)} prompts")

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if train_examples is None:
        splits = [split for r in range(repeats) for split in kfold_splits(examples, k=folds, seed=seed + r)]
        pool = examples
    else:
        offset = len(train_examples)
        splits = [(list(range(offset)), list(range(offset, len(everything))))]
        pool = everything

    def factory(name: str) -> Callable[[], BaseRouter]:
        if name == "checkpoint":  # never trained: one instance (and one encoder load) serves every fold
            if router_dir is None:
                raise ValueError('method "checkpoint" needs router_dir (a router checkpoint directory)')
            from router_model.multi_router import checkpoint_kind

            if checkpoint_kind(router_dir) == "multi":
                from router_model.lab.multi_method import MultiCheckpointMethod

                multi = MultiCheckpointMethod(router_dir)
                return lambda: multi
            wrapped = RouteT2IMethod(checkpoint=router_dir, name="checkpoint")
            return lambda: wrapped
        if name.startswith("routet2i"):
            return lambda: make_router(name, seed=seed, train_kwargs=routet2i_kwargs)
        return lambda: make_router(name, seed=seed)

    factories = {name: factory(name) for name in names}
    seconds: dict[str, list[float]] = {}
    scores = out_of_fold_scores(pool, splits, factories, states, log=log, seconds=seconds)

    dims = list(examples[0].metrics)
    q_e_all, q_c_all = (
        np.vstack([np.zeros((len(pool) - len(examples), len(dims))), q]) for q in quality_arrays(examples)
    )
    tb_all = prompt_tiebreak(pool)
    folds_q = [(q_e_all[test], q_c_all[test], tb_all[test]) for _, test in splits]
    result_methods = {name: _summarise(scores[name], folds_q, rhos, dims) for name in names}

    first = len(splits) // repeats if train_examples is None else len(splits)  # the first repeat's folds
    test_idx = np.concatenate([np.asarray(test, dtype=np.int64) for _, test in splits[:first]])
    pooled = {name: np.concatenate(scores[name][:first]) for name in names}
    bootstrap_result, bootstrap_length = _bootstrap_sections(
        result_methods, pooled, q_e_all[test_idx], q_c_all[test_idx], tb_all[test_idx], rhos, bootstrap, seed
    )
    edge_only = np.mean([qe.mean(axis=0) for qe, _, _ in folds_q], axis=0)
    cloud_only = np.mean([qc.mean(axis=0) for _, qc, _ in folds_q], axis=0)
    return {
        "n_prompts": len(examples),
        "n_train_prompts": len(train_examples) if train_examples is not None else None,
        "folds": len(splits) // repeats if train_examples is None else 1,
        "repeats": repeats if train_examples is None else 1,
        "mode": "k-fold" if train_examples is None else ("train-test" if train_examples else "checkpoint"),
        "seed": seed,
        "edge_model": examples[0].edge_model,
        "cloud_model": examples[0].cloud_model,
        "dims": dims,
        "rhos": [rho_key(r) for r in rhos],
        "methods": result_methods,
        "per_dimension": {
            "edge_only": dict(zip(dims, edge_only.tolist(), strict=True)),
            "cloud_only": dict(zip(dims, cloud_only.tolist(), strict=True)),
        }
        | {name: result_methods[name]["per_dimension"] for name in names},
        "bootstrap": bootstrap_result,
        "bootstrap_prompt_length": bootstrap_length,
        "seconds_per_fold": seconds,
    }

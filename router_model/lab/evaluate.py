"""Evaluation of routers: ΔP curves over the cloud budget ρ, cloud-call reduction, k-fold CV, bootstrap.

For a budget ρ a method sends its top ⌊ρn⌋ prompts by `cloud_advantage` to the cloud (ties broken by
a hash of the prompt text, so neither file order nor the method decides them) and

    ΔP(ρ) = mean_i (Q_route,i − Q_edge,i) / (Q_cloud,i − Q_edge,i) × 100,

Q_x,i the mean of metric i over the evaluated prompts: the share of the cloud model's gain recovered.
Random ≈ 100ρ; the oracle can exceed 100. Every learned method is trained per fold on the training
prompts only; ΔP is computed per fold on its test prompts, then averaged (± std across folds).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router_model.encoder import DEFAULT_ENCODER, TextEncoder, TokenStates
from router_model.lab.baselines import (
    ABLATIONS,
    BASELINES,
    ROUTERS,
    BaseRouter,
    RouteT2IMethod,
    make_router,
    torch_threads,
)
from router_model.lab.data import RoutingExample, check_consistent, kfold_splits, quality_arrays, stable_seed

TARGETS = (40, 50, 60, 80)
TABLE_RHOS = (0.25, 0.5, 0.75)
NOT_BASELINES = {"oracle", "routet2i", "checkpoint", *ABLATIONS}


def rho_grid(step: float = 0.05) -> np.ndarray:
    """0, step, …, 1 (rounded so that the keys format cleanly)."""
    n = int(round(1.0 / step))
    return np.round(np.linspace(0.0, 1.0, n + 1), 10)


def rho_key(rho: float) -> str:
    return f"{float(rho):g}"


# ---------------------------------------------------------------- the arithmetic


def routing_order(scores: np.ndarray, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Indices by descending score; equal scores by ascending `tiebreak` (default: index)."""
    scores = np.asarray(scores, dtype=np.float64)
    if tiebreak is None:
        tiebreak = np.arange(len(scores))
    return np.lexsort((np.asarray(tiebreak), -scores))


def n_cloud(rho: float, n: int) -> int:
    """Prompts sent to the cloud at budget ρ: ⌊ρn⌋ (never over budget)."""
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"budget ρ must be in [0, 1], got {rho}")
    return int(np.floor(rho * n + 1e-9))


def delta_p_curve(
    scores: np.ndarray,
    q_edge: np.ndarray,
    q_cloud: np.ndarray,
    rhos: Sequence[float],
    tiebreak: np.ndarray | None = None,
) -> np.ndarray:
    """ΔP(ρ) in percent for every ρ; q arrays are [n, k]. Metrics with no cloud−edge gap are left out."""
    q_edge, q_cloud = np.atleast_2d(q_edge).astype(np.float64), np.atleast_2d(q_cloud).astype(np.float64)
    if len(scores) != len(q_edge):
        raise ValueError(f"{len(scores)} scores for {len(q_edge)} prompts")
    gain = q_cloud - q_edge
    total = gain.sum(axis=0)
    usable = np.abs(total) > 1e-12 * max(1.0, float(np.abs(gain).sum()))
    if not usable.any():
        raise ValueError("edge and cloud have the same mean quality on every metric here: ΔP is undefined")
    cum = np.vstack([np.zeros(gain.shape[1]), np.cumsum(gain[routing_order(scores, tiebreak)], axis=0)])
    counts = [n_cloud(r, len(gain)) for r in rhos]
    return (cum[counts][:, usable] / total[usable]).mean(axis=1) * 100.0


def route_quality(
    scores: np.ndarray, q_edge: np.ndarray, q_cloud: np.ndarray, rho: float, tiebreak: np.ndarray | None = None
) -> np.ndarray:
    """Q_route per metric at budget ρ (mean over prompts of the served model's quality)."""
    q_edge, q_cloud = np.atleast_2d(q_edge), np.atleast_2d(q_cloud)
    cloud = np.zeros(len(q_edge), dtype=bool)
    cloud[routing_order(scores, tiebreak)[: n_cloud(rho, len(q_edge))]] = True
    return np.where(cloud[:, None], q_cloud, q_edge).mean(axis=0)


def cloud_call_reduction(delta_p: Sequence[float], rhos: Sequence[float], target: float) -> float:
    """1 − min{ρ : ΔP(ρ) ≥ target}, in percent; NaN when the curve never reaches the target."""
    for rho, value in zip(rhos, delta_p, strict=True):
        if value >= target - 1e-9:
            return (1.0 - float(rho)) * 100.0
    return float("nan")


def curve_auc(delta_p: Sequence[float], rhos: Sequence[float]) -> float:
    """Trapezoid area under ΔP(ρ) over ρ ∈ [0, 1] (percent · unit: random ≈ 50)."""
    y, x = np.asarray(delta_p, dtype=np.float64), np.asarray(rhos, dtype=np.float64)
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)


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


def encode_examples(examples: Sequence[RoutingExample], encoder: str | TextEncoder = DEFAULT_ENCODER) -> TokenStates:
    """Token states of all prompts, once (then sliced per fold with `TokenStates.subset`)."""
    enc = encoder if isinstance(encoder, TextEncoder) else TextEncoder(encoder)
    return enc.encode([ex.prompt for ex in examples])


def out_of_fold_scores(
    examples: Sequence[RoutingExample],
    splits: Sequence[tuple[Sequence[int], Sequence[int]]],
    factories: dict[str, Callable[[], BaseRouter]],
    states: TokenStates | None,
    log: Callable[..., Any] = print,
) -> dict[str, list[np.ndarray]]:
    """For each method and split: a fresh router fitted on the train part, scores on the test part.

    Runs torch on one thread: the routers are small, and intra-op threads cost more than they save
    (on a busy 2-core machine, RouteT2I trains over ten times faster this way)."""
    with torch_threads(1):
        return _out_of_fold_scores(examples, splits, factories, states, log)


def _out_of_fold_scores(
    examples: Sequence[RoutingExample],
    splits: Sequence[tuple[Sequence[int], Sequence[int]]],
    factories: dict[str, Callable[[], BaseRouter]],
    states: TokenStates | None,
    log: Callable[..., Any],
) -> dict[str, list[np.ndarray]]:
    scores: dict[str, list[np.ndarray]] = {name: [] for name in factories}
    for fold, (train_idx, test_idx) in enumerate(splits):
        train = [examples[i] for i in train_idx]
        test = [examples[i] for i in test_idx]
        train_states = states.subset(train_idx) if states is not None else None
        test_states = states.subset(test_idx) if states is not None else None
        for name, factory in factories.items():
            log(f"fold {fold + 1}/{len(splits)}: {name}")
            router = factory().fit(train, train_states)
            values = np.asarray(router.cloud_advantage(test, test_states), dtype=np.float64)
            if values.shape != (len(test),):
                raise RuntimeError(f"{name} returned {values.shape} scores for {len(test)} prompts")
            scores[name].append(values)
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


def paired_bootstrap(
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    q_edge: np.ndarray,
    q_cloud: np.ndarray,
    rhos: np.ndarray,
    tiebreak: np.ndarray | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """A − B on ΔP(0.5) and AUC over prompt resamples (the same resample for both methods)."""
    rng = np.random.default_rng(seed)
    n = len(scores_a)
    tiebreak = np.arange(n) if tiebreak is None else np.asarray(tiebreak)
    half = int(np.argmin(np.abs(rhos - 0.5)))
    diffs: dict[str, list[float]] = {"delta_p_0.5": [], "auc": []}
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        qe, qc, tb = q_edge[idx], q_cloud[idx], tiebreak[idx]
        if np.all(np.abs((qc - qe).sum(axis=0)) < 1e-12):
            continue
        ca = delta_p_curve(scores_a[idx], qe, qc, rhos, tb)
        cb = delta_p_curve(scores_b[idx], qe, qc, rhos, tb)
        diffs["delta_p_0.5"].append(ca[half] - cb[half])
        diffs["auc"].append(curve_auc(ca, rhos) - curve_auc(cb, rhos))
    out = {}
    for key, values in diffs.items():
        v = np.asarray(values)
        out[key] = {
            "mean_diff": float(v.mean()),
            "ci_low": float(np.percentile(v, 2.5)),
            "ci_high": float(np.percentile(v, 97.5)),
            "win_share": float((v > 0).mean()),
            "resamples": len(v),
        }
    return out


def _bootstrap_section(
    methods: dict[str, Any],
    pooled: dict[str, np.ndarray],
    q_edge: np.ndarray,
    q_cloud: np.ndarray,
    tiebreak: np.ndarray,
    rhos: np.ndarray,
    resamples: int,
    seed: int,
) -> dict[str, Any] | None:
    reference = "routet2i" if "routet2i" in pooled else ("checkpoint" if "checkpoint" in pooled else None)
    baselines = [m for m in pooled if m not in NOT_BASELINES]
    if reference is None or not baselines or resamples <= 0:
        return None
    best = max(baselines, key=lambda m: methods[m]["delta_p"]["0.5"])
    result = paired_bootstrap(
        pooled[reference], pooled[best], q_edge, q_cloud, rhos, tiebreak, resamples=resamples, seed=seed
    )
    return {"method": reference, "baseline": best, "pooled": "out-of-fold scores", "seed": seed} | result


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
) -> dict[str, Any]:
    """Evaluate routing methods on `examples`.

    `repeats` > 1 repeats the k-fold CV with split seeds seed, seed+1, …: means and spreads are then over
    all repeats × folds (one k-fold split of a few hundred noisy prompts swings ΔP by several points);
    the paired bootstrap uses the first repeat's out-of-fold scores.

    Modes: k-fold CV over `examples` (default); `train_examples` given → train on those, test on
    `examples` (one split); `router_dir` given → also evaluate that checkpoint as method "checkpoint"
    (never trained; scored with its own encoder; only meaningful on prompts it was not trained on).
    `states` are precomputed token states of the evaluated prompts (of train_examples + examples in
    the train/test mode). Names of methods: `baselines.ROUTERS` plus "checkpoint".
    """
    log = log or (lambda *_a, **_k: None)
    examples = list(examples)
    check_consistent(examples, "evaluation data")
    if train_examples is not None:
        train_examples = list(train_examples)
        check_consistent(train_examples, "training data")
        if train_examples[0].metrics != examples[0].metrics:
            raise ValueError(
                f"training data has metrics {train_examples[0].metrics} but test data {examples[0].metrics}; "
                "use datasets scored on the same metrics"
            )
    names = list(methods) if methods is not None else default_methods(ablations)
    if router_dir is not None and "checkpoint" not in names:
        names.append("checkpoint")
    if len(set(names)) != len(names):
        raise ValueError(f"methods listed twice: {names}")
    unknown = [n for n in names if n not in ROUTERS and n != "checkpoint"]
    if unknown:
        raise ValueError(f"unknown routing method {unknown[0]!r}; choose from {', '.join(ROUTERS)}")
    rhos = rho_grid(rho_step)

    everything = (train_examples or []) + examples
    needs_states = any(n not in {"random", "noun_count", "oracle", "checkpoint"} for n in names)
    if states is None and needs_states:
        log(f"encoding {len(everything)} prompts once")
        states = encode_examples(everything, encoder)
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
            wrapped = RouteT2IMethod(checkpoint=router_dir, name="checkpoint")
            return lambda: wrapped
        if name.startswith("routet2i"):
            return lambda: make_router(name, seed=seed, train_kwargs=routet2i_kwargs)
        return lambda: make_router(name, seed=seed)

    factories = {name: factory(name) for name in names}
    scores = out_of_fold_scores(pool, splits, factories, states, log=log)

    dims = list(examples[0].metrics)
    q_e_all, q_c_all = quality_arrays(pool)
    tb_all = prompt_tiebreak(pool)
    folds_q = [(q_e_all[test], q_c_all[test], tb_all[test]) for _, test in splits]
    result_methods = {name: _summarise(scores[name], folds_q, rhos, dims) for name in names}

    first = len(splits) // repeats if train_examples is None else len(splits)  # the first repeat's folds
    test_idx = np.concatenate([np.asarray(test, dtype=np.int64) for _, test in splits[:first]])
    pooled = {name: np.concatenate(scores[name][:first]) for name in names}
    bootstrap_result = _bootstrap_section(
        result_methods, pooled, q_e_all[test_idx], q_c_all[test_idx], tb_all[test_idx], rhos, bootstrap, seed
    )
    edge_only = np.mean([qe.mean(axis=0) for qe, _, _ in folds_q], axis=0)
    cloud_only = np.mean([qc.mean(axis=0) for _, qc, _ in folds_q], axis=0)
    return {
        "n_prompts": len(examples),
        "n_train_prompts": len(train_examples) if train_examples is not None else None,
        "folds": len(splits) // repeats if train_examples is None else 1,
        "repeats": repeats if train_examples is None else 1,
        "mode": "train-test" if train_examples is not None else "k-fold",
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
    }


# ---------------------------------------------------------------- presentation


def json_safe(value: Any) -> Any:
    """The result with NaN/inf replaced by None (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def result_json(result: dict[str, Any]) -> str:
    return json.dumps(json_safe(result), indent=2, allow_nan=False) + "\n"


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def markdown_table(result: dict[str, Any]) -> str:
    """ΔP at ρ = 0.25/0.5/0.75 (± std over folds), AUC, reductions at ΔP 40/50/60/80, per-dimension at ρ = 0.5."""
    rho_cols = [rho_key(r) for r in TABLE_RHOS]
    head = ["method"] + [f"ΔP({float(r):.0%})" for r in TABLE_RHOS] + ["AUC"]
    head += [f"red.@{t}" for t in TARGETS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in result["methods"].items():
        cells = [name]
        for key in rho_cols:
            cells.append(f"{_fmt(m['delta_p'].get(key))} ± {_fmt(m['delta_p_std'].get(key))}")
        cells.append(f"{_fmt(m['auc'])} ± {_fmt(m.get('auc_std'))}")
        cells += [_fmt(m["cloud_call_reduction"].get(str(t)), 1) for t in TARGETS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Per-dimension mean quality at ρ = 50% ({', '.join(result['dims'])}):", ""]
    dims = result["dims"]
    lines += ["| route | " + " | ".join(dims) + " |", "|" + "---|" * (len(dims) + 1)]
    for name, row in result["per_dimension"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row[d], 4) for d in dims) + " |")
    return "\n".join(lines) + "\n"


def bootstrap_markdown(result: dict[str, Any]) -> str:
    b = result.get("bootstrap")
    if not b:
        return "No paired bootstrap (RouteT2I or a baseline was not evaluated).\n"
    lines = [
        f"Paired bootstrap over test prompts ({b['delta_p_0.5']['resamples']} resamples, seed {b['seed']}, "
        f"{b['pooled']}): **{b['method']} − {b['baseline']}** (the best baseline by ΔP(50%)).",
        "",
        "| statistic | mean difference | 95% CI | share of resamples where " + b["method"] + " wins |",
        "|---|---|---|---|",
    ]
    for key, label in (("delta_p_0.5", "ΔP(50%)"), ("auc", "AUC")):
        s = b[key]
        lines.append(
            f"| {label} | {s['mean_diff']:+.2f} | [{s['ci_low']:+.2f}, {s['ci_high']:+.2f}] | {s['win_share']:.1%} |"
        )
    return "\n".join(lines) + "\n"


def plot_delta_p(result: dict[str, Any], path: str | Path) -> Path:
    """ΔP vs ρ per method with ±1 std bands across folds, and the random diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 5))
    colors = plt.get_cmap("tab20").colors
    for j, (name, m) in enumerate(result["methods"].items()):
        keys = list(m["delta_p"])
        x = np.array([float(k) for k in keys])
        y = np.array([m["delta_p"][k] for k in keys])
        s = np.array([m["delta_p_std"][k] for k in keys])
        style = "--" if name in ("oracle", "random") else (":" if name in ABLATIONS else "-")
        width = 2.4 if name in ("routet2i", "checkpoint") else 1.2
        color = "black" if width > 2 else colors[(2 * j) % 20 if j < 10 else (2 * j + 1) % 20]
        ax.plot(x * 100, y, label=name, linewidth=width, linestyle=style, color=color)
        ax.fill_between(x * 100, y - s, y + s, color=color, alpha=0.08)
    ax.plot([0, 100], [0, 100], color="grey", linewidth=0.6)
    ax.set_xlabel("cloud budget ρ (%)")
    ax.set_ylabel("ΔP (% of the cloud model's gain)")
    title = f"{result.get('edge_model', 'edge')} → {result.get('cloud_model', 'cloud')}"
    repeats = result.get("repeats", 1)
    cv = f"{result['folds']}-fold CV" + (f" × {repeats} split seeds" if repeats > 1 else "")
    ax.set_title(f"{title}: {result['n_prompts']} prompts, {cv}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_noun_win_rate(examples: Sequence[RoutingExample], path: str | Path) -> Path:
    """Cloud and edge win rate per noun-count bucket (the paper's Fig. 3 analogue)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from router_model.lab.noun_buckets import noun_bucket_table

    rows = noun_bucket_table(examples)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = [r["bucket"] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(x - 0.2, [r["cloud_win_rate"] * 100 for r in rows], width=0.4, label="cloud wins")
    ax.bar(x + 0.2, [r["edge_win_rate"] * 100 for r in rows], width=0.4, label="edge wins")
    for xi, r in zip(x, rows, strict=True):
        ax.annotate(f"n={r['n']}", (xi, 2), ha="center", fontsize=8)
    ax.set_xticks(x, labels)
    ax.set_xlabel("nouns in the prompt")
    ax.set_ylabel("win rate (%)")
    first = examples[0] if examples else None
    if first is not None:
        ax.set_title(f"{first.edge_model} vs {first.cloud_model}: win rate by noun count")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

"""The offline quality–cost frontier of routing over N models on rated data (`routet2i frontier`).

A test file of prompts rated on several models is split k-fold by normalised prompt text. For each
fold, the per-model quality predictor is `train_multi`'s IRT model (linear tower on prompt features
and the pooled MiniLM embedding, ability vector per model), trained on the other folds plus any
`--train` files without the fold's prompts; its per-(dataset, dimension, model) offsets, which
`train_multi` fits but does not keep, are refitted as the mean training residual. Predictions are
put back in the test set's own units (per-dimension mean and std of the training folds) and averaged
over the dimensions, like the true quality. The out-of-fold predictions of all folds then drive every
policy of `frontier_curves` on the whole test set; the deployable two-arm router also gets each prompt's
fold, to choose its pair for a fold on the other folds only.

Cost: `--costs MODEL=COST` (any unit: dollars, GPU-seconds), or, when no costs are given, the test
set's measured `seconds` per image (CEMS): then the realised cost is the prompt's own measurement and
the router's expected cost is the model's mean over the training folds.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from router_model.features import FEATURE_NAMES
from router_model.lab import frontier_curves as fc
from router_model.lab import frontier_ridge as fr_ridge
from router_model.lab.ratings import (
    COST_DIMENSIONS,
    RatedPrompt,
    dataset_name,
    normalisation,
    quality_dimensions,
    read_agiqa3k,
    read_genai_bench,
    read_long_csv,
)
from router_model.lab.train_multi import PromptInputs, train_multi
from router_model.model_ids import canonical_id
from router_model.multi_router import MultiRouterConfig

NO_NOUNS = tuple(n for n in FEATURE_NAMES if n != "log_nouns")  # spaCy-free columns for uncached prompts


def load_rated(path: str | Path) -> tuple[str, list[RatedPrompt]]:
    """(dataset name, rated prompts) of a GenAI-Bench JSON, an AGIQA-3K CSV or a long-format ratings file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no ratings file {path}")
    if path.suffix == ".json":
        return "genai", read_genai_bench(path)
    with path.open("rb") as fh:
        head = fh.read(200)
    if b"mos_quality" in head:
        return "agiqa3k", read_agiqa3k(path)
    name = dataset_name(path)
    return name, read_long_csv(path, name)


def parse_costs(specs: Sequence[str], known: Sequence[str], dataset: str) -> dict[str, float]:
    """`MODEL=COST` (model raw or canonical) → {canonical id: cost}; unknown models name the known ones."""
    out = {}
    for spec in specs:
        name, sep, value = spec.rpartition("=")
        if not sep or not name:
            raise ValueError(f"--costs entries are MODEL=COST, got {spec!r}")
        try:
            cost = float(value)
        except ValueError:
            raise ValueError(f"--costs {spec!r}: {value!r} is not a number") from None
        if not np.isfinite(cost) or cost < 0:
            raise ValueError(f"--costs {spec!r}: a cost is a finite number ≥ 0")
        cid = canonical_id(name, dataset)
        if cid not in known:
            raise ValueError(f"--costs: unknown model {name!r} in {dataset}; known models: {', '.join(sorted(known))}")
        out[cid] = cost
    if len(out) < 2:
        raise ValueError("--costs needs at least two models")
    return out


@dataclass
class TestSet:
    """The test prompts rated on every chosen model and dimension, as matrices (prompts × models)."""

    name: str
    items: list[RatedPrompt]
    models: list[str]
    dims: list[str]
    quality: np.ndarray
    cost: np.ndarray
    measured: bool  # cost is the per-prompt `seconds`


def test_matrix(name: str, items: Sequence[RatedPrompt], costs: dict[str, float] | None, dimension: str | None):
    dims = [dimension] if dimension else quality_dimensions(items)
    if dimension and dimension not in quality_dimensions(items):
        raise ValueError(f"--dimension {dimension!r} is not in {name}; known: {', '.join(quality_dimensions(items))}")
    if costs is None:
        cost_dims = {d for it in items for v in it.scores.values() for d in v if d in COST_DIMENSIONS}
        if not cost_dims:
            raise ValueError(f"{name} has no measured seconds: pass --costs MODEL=COST for at least two models")
        models = sorted({m for it in items for m, v in it.scores.items() if "seconds" in v})
    else:
        models = list(costs)
    need = dims + ([] if costs else ["seconds"])
    kept = [it for it in items if all(m in it.scores and all(d in it.scores[m] for d in need) for m in models)]
    if len(kept) < 10:
        raise ValueError(f"{name}: only {len(kept)} prompts are rated on every model {models} and dimension {dims}")
    q = np.array([[np.mean([it.scores[m][d] for d in dims]) for m in models] for it in kept])
    if costs is None:
        c = np.array([[it.scores[m]["seconds"] for m in models] for it in kept])
    else:
        c = np.tile([costs[m] for m in models], (len(kept), 1)).astype(np.float64)
    return TestSet(name, kept, models, dims, q, c, costs is None)


def build_inputs(prompts: Sequence[str], cache: str | Path | None) -> tuple[PromptInputs, str]:
    """Inputs from the research cache (`inputs.npz` + `prompts.json` beside it) when it holds every prompt;
    else the spaCy-free cheap features only (no encoder download on these machines)."""
    from router_model.features import prompt_features
    from router_model.lab.ratings import prompt_key

    keys = list(dict.fromkeys(prompt_key(p) for p in prompts))
    if cache and Path(cache).exists() and (Path(cache).parent / "prompts.json").exists():
        cached = json.loads((Path(cache).parent / "prompts.json").read_text(encoding="utf-8"))
        row = {prompt_key(p): i for i, p in enumerate(cached)}
        if all(k in row for k in keys):
            d = np.load(cache)
            idx = np.array([row[k] for k in keys])
            inputs = PromptInputs(
                d["features"][idx], d["pooled"][idx], d["tokens"][idx], {k: i for i, k in enumerate(keys)}
            )
            return inputs, "features + pooled MiniLM (cache)"
    text = {}
    for p in prompts:
        text.setdefault(prompt_key(p), p)
    feats = prompt_features([text[k] for k in keys], names=NO_NOUNS)
    tokens = np.array([len(text[k].split()) for k in keys], dtype=np.float32)
    return PromptInputs(feats, np.zeros((len(keys), 0), np.float32), tokens, {k: i for i, k in enumerate(keys)}), (
        "cheap features (no cache)"
    )


PREDICTORS = ("auto", "irt", "ridge")


def predict_quality(
    train_sets: dict[str, list[RatedPrompt]], test: TestSet, rows: np.ndarray, inputs: PromptInputs, seed: int = 0,
    predictor: str = "auto", log: list[dict] | None = None,
) -> np.ndarray:  # fmt: skip
    """Predicted quality [len(rows), models] of the test set's models, in its own units (mean over its dims).

    `predictor`: "irt" (`predict_irt`), "ridge" (`frontier_ridge`, on the test set's own training prompts)
    or "auto" (`choose_predictor` on the training prompts, then that one). Each call's choice is appended
    to `log` when given.
    """
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {PREDICTORS}, got {predictor!r}")
    entry: dict = {"predictor": predictor}
    if predictor == "auto":
        entry = choose_predictor(train_sets, test, inputs, seed)
        predictor = entry["predictor"]
    if predictor == "irt":
        out = predict_irt(train_sets, test, rows, inputs, seed)
    else:
        out, choice = _ridge(train_sets[test.name], test, rows, inputs, seed)
        entry |= {"alpha": choice.alpha, "emb_alpha": choice.emb_alpha, "gamma": choice.gamma}
    if log is not None:
        log.append(entry)
    return out


def _ridge(items: list[RatedPrompt], test: TestSet, rows: np.ndarray, inputs: PromptInputs, seed: int):
    cheap, emb = fr_ridge.design(inputs.features, inputs.tokens, inputs.pooled)
    return fr_ridge.fit_predict(items, test.models, test.dims, cheap, emb, lambda it: inputs.row[it.key], rows, seed)


def choose_predictor(
    train_sets: dict[str, list[RatedPrompt]], test: TestSet, inputs: PromptInputs, seed: int = 0
) -> dict:
    """IRT or ridge, decided on the training prompts only by a rule fixed before any test margin was seen.

    One inner hold-out (1/`INNER_FOLDS` of the test set's training prompts, by prompt text) is removed
    from every training set; both predictors are fitted on the rest (the ridge choosing its (α, α_e, γ)
    by its own inner k-fold there) and scored on the hold-out prompts rated on every model: squared
    error after the cross-fitted shrinkage slope that `shrink` applies, granted to both alike
    (`frontier_ridge.shrunk_mse`). The ridge is kept when its error is strictly lower; else the IRT.
    """
    items = train_sets[test.name]
    split = fr_ridge.key_folds([it.key for it in items], fr_ridge.INNER_FOLDS, seed + 7)
    held = {k for k, f in split.items() if f == 0}
    inner = {n: [it for it in its if it.key not in held] for n, its in train_sets.items()}
    scored = [
        it for it in items
        if it.key in held and all(m in it.scores and all(d in it.scores[m] for d in test.dims) for m in test.models)
    ]  # fmt: skip
    if len(scored) < 5 or len(inner[test.name]) < 10:
        return {"predictor": "irt", "reason": "too few training prompts to compare"}
    truth = np.array([[np.mean([it.scores[m][d] for d in test.dims]) for m in test.models] for it in scored])
    mu = np.array([y.mean() for _, y in fr_ridge.targets(inner[test.name], test.models, test.dims)])
    rows = inputs.rows([it.prompt for it in scored])
    irt = fr_ridge.shrunk_mse(predict_irt(inner, test, rows, inputs, seed), truth, mu)
    ridge = fr_ridge.shrunk_mse(_ridge(inner[test.name], test, rows, inputs, seed)[0], truth, mu)
    return {"predictor": "ridge" if ridge < irt else "irt", "inner_mse_irt": irt, "inner_mse_ridge": ridge}


def predict_irt(
    train_sets: dict[str, list[RatedPrompt]], test: TestSet, rows: np.ndarray, inputs: PromptInputs, seed: int = 0
) -> np.ndarray:
    """`train_multi`'s IRT model (rank 8), its per-model offsets refitted on the test set's training prompts."""
    use_emb = inputs.pooled.shape[1] > 0
    names = list(FEATURE_NAMES if inputs.features.shape[1] == len(FEATURE_NAMES) else NO_NOUNS)
    config = MultiRouterConfig(feature_names=names, use_embedding=use_emb, embed_dim=inputs.pooled.shape[1], rank=8)
    model, _ = train_multi(train_sets, inputs, config=config, l2=1e-3, seed=seed)
    x = np.concatenate([inputs.features, inputs.pooled], 1) if use_emb else inputs.features
    with torch.no_grad():
        theta = model.theta(torch.as_tensor(x, dtype=torch.float32)).double().numpy()
        ab = (model.ability + model.difficulty).double().numpy()
    midx = {m: i for i, m in enumerate(model.config.models)}
    items = train_sets[test.name]
    stats = normalisation(items)
    out = np.zeros((len(rows), len(test.models)))
    for j, m in enumerate(test.models):
        a = ab[midx[m]]
        for d in test.dims:
            train_rows = [inputs.row[it.key] for it in items if m in it.scores and d in it.scores[m]]
            z = np.array(
                [(it.scores[m][d] - stats[d][0]) / stats[d][1] for it in items if m in it.scores and d in it.scores[m]]
            )
            bias = float(np.mean(z - theta[train_rows] @ a))
            out[:, j] += stats[d][0] + stats[d][1] * (bias + theta[rows] @ a)
        out[:, j] /= len(test.dims)
    return out


def fold_of(items: Sequence[RatedPrompt], k: int, seed: int = 0) -> np.ndarray:
    keys = sorted({it.key for it in items})
    random.Random(seed).shuffle(keys)
    f = {key: j % k for j, key in enumerate(keys)}
    return np.array([f[it.key] for it in items])


def out_of_fold(
    test: TestSet, all_test_items: list[RatedPrompt], train_sets: dict[str, list[RatedPrompt]], inputs: PromptInputs,
    folds: int, seed: int = 0, predictor: str = "auto", log: list[dict] | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(predicted quality, expected cost) of every test prompt from the fold model that did not see it."""
    fold = fold_of(test.items, folds, seed)
    pred_q, pred_c = fold_predictions(test, all_test_items, train_sets, inputs, folds, seed, predictor, log)
    return shrink(pred_q, test.quality, fold), pred_c


def fold_predictions(
    test: TestSet, all_test_items: list[RatedPrompt], train_sets: dict[str, list[RatedPrompt]], inputs: PromptInputs,
    folds: int, seed: int = 0, predictor: str = "auto", log: list[dict] | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """`out_of_fold` before the shrinkage: each fold predicted by a model (and a predictor choice) made without it."""
    fold = fold_of(test.items, folds, seed)
    pred_q = np.zeros_like(test.quality)
    pred_c = test.cost.copy()
    for f in range(folds):
        held = {it.key for it, g in zip(test.items, fold, strict=True) if g == f}
        sets = {n: [it for it in items if it.key not in held] for n, items in train_sets.items()}
        sets[test.name] = [it for it in all_test_items if it.key not in held]
        in_fold = np.flatnonzero(fold == f)
        rows = inputs.rows([test.items[i].prompt for i in in_fold])
        pred_q[in_fold] = predict_quality(sets, test, rows, inputs, seed, predictor, log)
        if test.measured:
            pred_c[in_fold] = test.cost[fold != f].mean(0)
    return pred_q, pred_c


def shrink(pred_q: np.ndarray, quality: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Cross-fitted shrinkage of each prompt's predicted deviation from the model means.

    For fold f: μ = the other folds' mean quality per model, β = the least-squares slope (clipped to
    [0, 1]) of true on predicted deviation over the other folds' out-of-fold predictions, and the fold's
    prediction becomes μ + β·(pred − μ). A weak per-prompt signal then cannot outvote a clear gap in
    the means (the fold's own labels never enter its μ or β).
    """
    out = pred_q.copy()
    for f in np.unique(fold):
        o = fold != f
        mu = quality[o].mean(0)
        x, y = pred_q[o] - mu, quality[o] - mu
        beta = float(np.clip((x * y).sum() / max((x * x).sum(), 1e-12), 0.0, 1.0))
        out[fold == f] = mu + beta * (pred_q[fold == f] - mu)
    return out


def run_frontier(
    test_path: str | Path, train_paths: Sequence[str | Path] = (), costs: Sequence[str] | None = None,
    dimension: str | None = None, folds: int = 5, cache: str | Path | None = "runs/inputs.npz",
    bootstrap: int = 200, seed: int = 0, predictor: str = "auto",
) -> dict:  # fmt: skip
    """Every method's (cost, quality) points on the test file and the issue's margins with bootstrap CIs."""
    t0 = time.perf_counter()
    name, items = load_rated(test_path)
    known = sorted({m for it in items for m in it.scores})
    cost_map = parse_costs(costs, known, name) if costs else None
    test = test_matrix(name, items, cost_map, dimension)
    train_sets: dict[str, list[RatedPrompt]] = {}
    for i, p in enumerate(train_paths):
        if Path(p).resolve() == Path(test_path).resolve():
            continue  # the test file trains through its other folds already
        n, its = load_rated(p)
        train_sets[n if n not in train_sets and n != name else f"{n}#{i}"] = its
    if folds < 2:
        raise ValueError("--folds must be at least 2")
    prompts = [it.prompt for its in [items, *train_sets.values()] for it in its]
    inputs, input_kind = build_inputs(prompts, cache)
    choices: list[dict] = []
    pred_q, pred_c = out_of_fold(test, items, train_sets, inputs, folds, seed, predictor, choices)
    words = np.array([len(it.prompt.split()) for it in test.items], dtype=np.float64)
    fold = fold_of(test.items, folds, seed)  # the folds of `out_of_fold`: the deployable two-arm router chooses by them
    curves = fc.all_curves(test.quality, test.cost, pred_q, pred_c, words, test.models, fold)
    ci = fc.bootstrap_margins(
        test.quality, test.cost, pred_q, pred_c, words, test.models, fold, reps=bootstrap, seed=seed
    )
    cheap, best = fc.cheapest_and_best(test.quality, test.cost)
    return {
        "dataset": name,
        "test": str(test_path),
        "train": [str(p) for p in train_paths],
        "prompts": len(test.items),
        "models": test.models,
        "dimensions": test.dims,
        "costs": {m: float(test.cost[:, j].mean()) for j, m in enumerate(test.models)},
        "cost_unit": "measured seconds per image" if test.measured else "given per model (--costs)",
        "cheapest": test.models[cheap],
        "best": test.models[best],
        "folds": folds,
        "predictor": f"{predictor} (IRT: train_multi, linear tower, rank 8; ridge: frontier_ridge) on {input_kind}",
        "predictor_folds": choices,
        "length": "words per prompt",
        "methods": {
            m: {"points": [{"cost": float(c), "quality": float(q)} for c, q in pts]} for m, pts in curves.items()
        },
        "margins": ci,
        "bootstrap": bootstrap,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def curves_of(result: dict) -> dict[str, np.ndarray]:
    """The JSON's methods back as [points, 2] arrays."""
    return {m: np.array([[p["cost"], p["quality"]] for p in v["points"]]) for m, v in result["methods"].items()}

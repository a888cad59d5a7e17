"""Leave-one-dataset-out (and cross-set k-fold) comparison of router designs on the shared rating sets.

    python -m router_model.lab.lodo --data ../shared/data --out runs/lodo.json [--kfold genai,cems]

LODO: for each set with a natural pair, train on every other set (without any prompt whose
normalised text occurs in the held-out set), score the held-out pair, report ΔP(50%) and AUC.
k-fold: 5 folds of one set's pair prompts; train on everything except the test fold's prompts.
Inputs (features, pooled MiniLM embedding, token counts) are cached in runs/inputs.npz.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from router_model.features import FEATURE_NAMES
from router_model.lab.delta_p import curve_auc, delta_p_curve, rho_grid
from router_model.lab.evaluate import prompt_tiebreak
from router_model.lab.multi_ridge import fit_ridge, pair_ridge
from router_model.lab.ratings import (
    NATURAL_PAIRS,
    Pair,
    RatedPrompt,
    distinct_prompts,
    load_shared,
    prompt_key,
    to_pair_examples,
)
from router_model.lab.train_multi import PromptInputs, build_targets, train_multi
from router_model.multi_router import MultiRouterConfig

RHOS = rho_grid()
Scorer = Callable[[dict[str, list[RatedPrompt]], list[str], Pair], tuple[np.ndarray, str]]


def load_inputs(data: str, cache: str) -> PromptInputs:
    from router_model.lab.cache import cached_inputs

    prompts = distinct_prompts(load_shared(data))
    d = cached_inputs(prompts, cache)
    return PromptInputs(d["features"], d["pooled"], d["tokens"], {prompt_key(p): i for i, p in enumerate(prompts)})


def score_pair(scores: np.ndarray, examples) -> tuple[float, float]:
    q_e = np.array([ex.q_edge for ex in examples])
    q_c = np.array([ex.q_cloud for ex in examples])
    curve = delta_p_curve(scores, q_e, q_c, RHOS, prompt_tiebreak(examples))
    return float(curve[10]), curve_auc(curve, RHOS)


# ---------------------------------------------------------------- candidates


_FITS: dict = {}


def _fit_once(key: tuple, train, build):
    """One fit per (design, training sets); the registry holds `train` itself so its id is never reused."""
    hit = _FITS.get(key)
    if hit is None or hit[0] is not train:
        _FITS[key] = (train, build())
    return _FITS[key][1]


def _ridge(inputs: PromptInputs, use_emb: bool, alpha: float, pairs_mode: str = "all") -> Scorer:
    def build(train):
        t = _fit_once(("targets", pairs_mode), train, lambda: build_targets(train, inputs, pairs_mode))
        x_all = np.concatenate([inputs.features, inputs.pooled], 1) if use_emb else inputs.features
        mu, sd, beta = pair_ridge(x_all, t, alpha)
        return x_all, mu, sd, beta

    def fit(train, prompts, pair):
        x_all, mu, sd, beta = _fit_once(("ridge", use_emb, alpha, pairs_mode), train, lambda: build(train))
        return ((x_all[inputs.rows(prompts)] - mu) / sd) @ beta, "generic"

    return fit


def _irt(inputs: PromptInputs, tower: str, use_emb: bool, head: str, **train_kw) -> Scorer:
    def fit(train, prompts, pair):
        key = ("irt", tower, use_emb, tuple(sorted(train_kw.items())))
        cfg = MultiRouterConfig(tower=tower, use_embedding=use_emb)
        model, summary = _fit_once(key, train, lambda: train_multi(train, inputs, cfg, **train_kw))
        rows = inputs.rows(prompts)
        edge, cloud = (pair.edge, pair.cloud) if head == "auto" else ("?edge", "?cloud")
        out = model.advantage_from_inputs(
            inputs.features[rows], inputs.pooled[rows] if use_emb else None, inputs.tokens[rows], edge, cloud
        )
        return out.advantage, out.head

    return fit


def _blend(inputs: PromptInputs, base: Scorer, weight: float = 1.0) -> Scorer:
    """z(base) + weight · z(log tokens), both z-scored over the scored prompts (no labels used)."""

    def fit(train, prompts, pair):
        s, head = base(train, prompts, pair)
        lt = np.log1p(inputs.tokens[inputs.rows(prompts)])
        z = lambda v: (v - v.mean()) / (v.std() + 1e-12)  # noqa: E731
        return z(s) + weight * z(lt), head

    return fit


def candidates(inputs: PromptInputs) -> dict[str, Scorer]:
    """Every design compared; names start with the brief's letter (a features, b +embedding, c IRT, e blends)."""
    out: dict[str, Scorer] = {
        "random": lambda tr, p, pair: (np.random.default_rng(0).random(len(p)), "-"),
        "prompt_length": lambda tr, p, pair: (inputs.tokens[inputs.rows(p)].astype(np.float64), "-"),
        "noun_count": lambda tr, p, pair: (inputs.features[inputs.rows(p), 1].astype(np.float64), "-"),
    }
    for emb in (False, True):
        for mode in ("all", "gap", "natural"):
            for alpha in (1e-3, 0.1, 10.0):
                name = f"{'b' if emb else 'a'}_ridge_{mode}_a{alpha:g}"
                out[name] = _ridge(inputs, emb, alpha, mode)
                out[f"e_{name[2:]}{'_emb' if emb else ''}+len"] = _blend(inputs, out[name])
    for tower, emb, l2 in (
        ("linear", False, 1e-3),
        ("linear", True, 1e-3),
        ("linear", True, 1e-1),
        ("mlp", True, 1e-3),
    ):
        name = f"c_irt_{tower}{'_emb' if emb else ''}_l2{l2:g}"
        out[name] = _irt(inputs, tower, emb, "auto", l2=l2)
        out[f"{name}(generic)"] = _irt(inputs, tower, emb, "generic", l2=l2)
        out[f"e_{name[2:]}+len"] = _blend(inputs, out[name])
    for mode in ("all", "natural"):
        for blend in (0.0, 0.5, 1.0, 2.0):
            out[f"s_ridge_{mode}_emb_a0.1_blend{blend:g}"] = _shipped_ridge(inputs, mode, 0.1, blend)
    no_nouns = tuple(n for n in FEATURE_NAMES if n != "log_nouns")  # no spaCy at serving time
    out["s_ridge_all_emb_a0.1_blend0_nonouns"] = _shipped_ridge(inputs, "all", 0.1, 0.0, no_nouns)
    return out


def _shipped_ridge(inputs: PromptInputs, mode: str, alpha: float, blend: float, names=FEATURE_NAMES) -> Scorer:
    """The deliverable path: `fit_ridge` → `MultiRouter` (blend with training-set statistics, as served)."""

    def fit(train, prompts, pair):
        t = _fit_once(("targets", mode), train, lambda: build_targets(train, inputs, mode))
        model = _fit_once(
            ("ship", mode, alpha, blend, tuple(names)),
            train,
            lambda: fit_ridge(train, inputs, alpha, mode, True, blend, targets=t, feature_names=names),
        )
        rows = inputs.rows(prompts)
        out = model.advantage_from_inputs(
            inputs.features[rows], inputs.pooled[rows], inputs.tokens[rows], pair.edge, pair.cloud
        )
        return out.advantage, out.head

    return fit


# ---------------------------------------------------------------- protocols


def lodo(sets, inputs, methods, held: list[str]) -> dict:
    out: dict = {}
    for name in held:
        pair = NATURAL_PAIRS[name]
        examples = to_pair_examples(sets[name], pair)
        test_keys = {it.key for it in sets[name]}
        train = {n: [it for it in items if it.key not in test_keys] for n, items in sets.items() if n != name}
        prompts = [ex.prompt for ex in examples]
        out[name] = {"n": len(examples)}
        for m, fn in methods.items():
            t = time.perf_counter()
            s, head = fn(train, prompts, pair)
            dp, auc = score_pair(s, examples)
            out[name][m] = {"dp50": dp, "auc": auc, "head": head, "s": time.perf_counter() - t}
            print(f"{name:12s} {m:26s} dP50={dp:7.1f} AUC={auc:6.1f} {head} {time.perf_counter() - t:.1f}s", flush=True)
    return out


def kfold(sets, inputs, methods, name: str, k: int = 5, seed: int = 0) -> dict:
    import random

    pair = NATURAL_PAIRS[name]
    examples = to_pair_examples(sets[name], pair)
    keys = sorted({prompt_key(ex.prompt) for ex in examples})
    random.Random(seed).shuffle(keys)
    fold_of = {key: j % k for j, key in enumerate(keys)}
    res: dict = {m: [] for m in methods}
    for f in range(k):
        test = [ex for ex in examples if fold_of[prompt_key(ex.prompt)] == f]
        test_keys = {prompt_key(ex.prompt) for ex in test}
        train = {n: [it for it in items if it.key not in test_keys] for n, items in sets.items()}
        for m, fn in methods.items():
            t = time.perf_counter()
            s, head = fn(train, [ex.prompt for ex in test], pair)
            dp, auc = score_pair(s, test)
            res[m].append({"dp50": dp, "auc": auc, "head": head, "s": time.perf_counter() - t})
            print(
                f"{name} fold {f} {m:26s} dP50={dp:7.1f} AUC={auc:6.1f} {head} {time.perf_counter() - t:.1f}s",
                flush=True,
            )
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--cache", default="runs/inputs.npz")
    ap.add_argument("--out", default="runs/lodo.json")
    ap.add_argument("--held", default="genai,agiqa3k,geneval,seetrue,aigciqa2023,agiqa1k,cems")
    ap.add_argument("--kfold", default="")
    ap.add_argument("--methods", default="")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    sets = load_shared(args.data)
    inputs = load_inputs(args.data, args.cache)
    methods = candidates(inputs)
    if args.methods:
        import fnmatch

        pats = args.methods.split(",")
        methods = {m: f for m, f in methods.items() if any(fnmatch.fnmatch(m, p) for p in pats)}
    result = {}
    if args.held:
        result["lodo"] = lodo(sets, inputs, methods, args.held.split(","))
    for name in filter(None, args.kfold.split(",")):
        result[f"kfold_{name}"] = kfold(sets, inputs, methods, name)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

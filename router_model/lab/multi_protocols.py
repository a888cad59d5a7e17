"""The many-model router as the CLI runs it: cached inputs, the shipped design, leave-one-dataset-out, model card.

`routet2i evaluate --lodo` and `routet2i train --multi` both start from every shared rated set
(`ratings.load_shared`) and one input table (cheap features, mean-pooled encoder states, token counts)
cached under a cache directory, keyed by a hash of the encoder and the prompt texts: a re-run encodes nothing.

The shipped design is the one the pre-registered LODO rule chose (docs/ROUTER_LODO.md): a closed-form ridge
on [cheap features without spaCy's noun count, MiniLM mean-pooled], every training pair's oriented gap,
dataset-balanced, α = 0.1 (`train_multi.fit_ridge`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router_model.encoder import DEFAULT_ENCODER
from router_model.features import FEATURE_NAMES
from router_model.lab.delta_p import curve_auc, delta_p_curve, rho_grid, rho_key
from router_model.lab.evaluate import prompt_tiebreak
from router_model.lab.markdown import table
from router_model.lab.multi_ridge import fit_ridge
from router_model.lab.ratings import (
    NATURAL_PAIRS,
    Pair,
    RatedPrompt,
    distinct_prompts,
    load_shared,
    prompt_key,
    to_pair_examples,
)
from router_model.lab.train_multi import PromptInputs
from router_model.multi_router import MultiRouter

SHIPPED = {"alpha": 0.1, "pairs_mode": "all", "length_blend": 0.0}
SHIPPED_FEATURES = tuple(n for n in FEATURE_NAMES if n != "log_nouns")  # no spaCy at serving time
DESIGN = (
    "ridge (α = 0.1) on [cheap features without the spaCy noun count, mean-pooled MiniLM], fitted to every "
    "training pair's oriented quality gap (z per dataset and dimension, each dataset the same weight); "
    "one generic edge-vs-cloud head"
)
LODO_METHODS = ("routet2i", "prompt_length", "noun_count", "random", "oracle")


# ---------------------------------------------------------------- inputs


def cache_file(cache_dir: str | Path, prompts: Sequence[str], encoder: str = DEFAULT_ENCODER) -> Path:
    digest = hashlib.sha256("\n".join([encoder, *prompts]).encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / f"inputs-{len(prompts)}-{digest}.npz"


def shared_inputs(
    data_dir: str | Path, cache_dir: str | Path, log: Callable[..., Any] = print
) -> tuple[dict[str, list[RatedPrompt]], PromptInputs]:
    """Every shared rated set and the inputs of all its prompts (encoded once, then read from the cache)."""
    from router_model.lab.cache import cached_inputs

    sets = load_shared(data_dir)
    prompts = distinct_prompts(sets)
    path = cache_file(cache_dir, prompts)
    if not path.exists():
        log(f"encoding {len(prompts)} prompts once (cached in {path})")
    d = cached_inputs(prompts, path)
    rows = {prompt_key(p): i for i, p in enumerate(prompts)}
    return sets, PromptInputs(d["features"], d["pooled"], d["tokens"], rows)


def fit_shipped(sets: dict[str, Sequence[RatedPrompt]], inputs: PromptInputs) -> MultiRouter:
    return fit_ridge(sets, inputs, use_embedding=True, feature_names=SHIPPED_FEATURES, **SHIPPED)


# ---------------------------------------------------------------- leave-one-dataset-out


def _oracle(q_e: np.ndarray, q_c: np.ndarray) -> np.ndarray:
    gain = q_c - q_e
    mean = gain.mean(axis=0)
    return (gain / np.where(np.abs(mean) < 1e-12, 1e-12, mean)).mean(axis=1)


BASELINES = ("prompt_length", "noun_count", "random", "oracle")


def _baseline_scores(method: str, inputs: PromptInputs, rows: np.ndarray, q_e: np.ndarray, q_c: np.ndarray,
                     seed: int) -> np.ndarray:  # fmt: skip
    if method == "prompt_length":
        return inputs.tokens[rows].astype(np.float64)
    if method == "noun_count":
        return inputs.features[rows, FEATURE_NAMES.index("log_nouns")].astype(np.float64)
    if method == "random":
        return np.random.default_rng(seed).random(len(rows))
    if method == "oracle":
        return _oracle(q_e, q_c)
    raise ValueError(f"unknown LODO method {method!r}; choose from {', '.join(LODO_METHODS)}")


def shipped_fit(inputs: PromptInputs):
    """The shipped design as a LODO method: training sets → scorer of (input rows, pair)."""

    def fit(train: dict[str, list[RatedPrompt]]):
        model = fit_shipped(train, inputs)

        def score(rows: np.ndarray, pair: Pair) -> tuple[np.ndarray, str]:
            out = model.advantage_from_inputs(
                inputs.features[rows], inputs.pooled[rows], inputs.tokens[rows], pair.edge, pair.cloud
            )
            return out.advantage, out.head

        return score

    return fit


def lodo_evaluate(
    sets: dict[str, list[RatedPrompt]],
    inputs: PromptInputs,
    held_out: Sequence[str] | None = None,
    seed: int = 0,
    log: Callable[..., Any] = print,
    fits: dict[str, Callable] | None = None,
    train_pool: dict[str, list[RatedPrompt]] | None = None,
    design: str = DESIGN,
) -> dict[str, Any]:
    """For each held-out set with a natural pair: fit each learned method (`fits`, default the shipped design as
    `routet2i`) on every other set without any prompt of the held-out set, score the natural pair; the
    training-free methods side by side. Training draws from `train_pool` (e.g. capped sets; default `sets`);
    the held-out set is always tested whole."""
    names = [n for n in NATURAL_PAIRS if n in sets] if held_out is None else list(held_out)
    missing = [n for n in names if n not in NATURAL_PAIRS or n not in sets]
    if missing:
        raise ValueError(f"no natural pair or no data for {missing}; held-out sets: {[n for n in NATURAL_PAIRS]}")
    fits = fits or {"routet2i": shipped_fit(inputs)}
    pool = sets if train_pool is None else train_pool
    order = [*fits, *BASELINES]
    rhos = rho_grid()
    out: dict[str, Any] = {}
    for name in names:
        started = time.perf_counter()
        pair = NATURAL_PAIRS[name]
        examples = to_pair_examples(sets[name], pair)
        test_keys = {it.key for it in sets[name]}
        train = {n: [it for it in items if it.key not in test_keys] for n, items in pool.items() if n != name}
        rows = inputs.rows([ex.prompt for ex in examples])
        q_e = np.array([ex.q_edge for ex in examples])
        q_c = np.array([ex.q_cloud for ex in examples])
        tb = prompt_tiebreak(examples)
        methods, seconds = {}, {}
        for m in order:
            t0 = time.perf_counter()
            if m in fits:
                s, head = fits[m](train)(rows, pair)
            else:
                s, head = _baseline_scores(m, inputs, rows, q_e, q_c, seed), "-"
            seconds[m] = time.perf_counter() - t0
            curve = delta_p_curve(s, q_e, q_c, rhos, tb)
            methods[m] = {"delta_p": {rho_key(r): float(v) for r, v in zip(rhos, curve, strict=True)},
                          "auc": curve_auc(curve, rhos), "head": head}  # fmt: skip
        out[name] = {
            "n_prompts": len(examples), "edge_model": pair.edge, "cloud_model": pair.cloud,
            "dims": list(pair.dimensions), "train_sets": {n: len(v) for n, v in train.items()}, "methods": methods,
        }  # fmt: skip
        if len(fits) > 1:
            out[name]["seconds"] = seconds
        length = methods["prompt_length"]
        learned = " ".join(f"{m} ΔP(50%)={methods[m]['delta_p']['0.5']:.1f} AUC={methods[m]['auc']:.1f}" for m in fits)
        log(f"{name}: n={len(examples)} {learned} (prompt_length {length['delta_p']['0.5']:.1f} / {length['auc']:.1f}) "
            f"{time.perf_counter() - started:.1f}s")  # fmt: skip
    mean = {
        m: {"delta_p_0.5": float(np.mean([out[s]["methods"][m]["delta_p"]["0.5"] for s in out])),
            "auc": float(np.mean([out[s]["methods"][m]["auc"] for s in out]))}
        for m in order
    }  # fmt: skip
    return {"protocol": "lodo", "design": design, "seed": seed, "method_order": order, "held_out": out, "mean": mean}


def lodo_markdown(result: dict[str, Any]) -> str:
    """One row per method: ΔP(50%) / AUC on each held-out set's natural pair, the means, and on how many held-out
    sets it is at least prompt_length's ΔP(50%) and AUC."""
    held = result["held_out"]
    order = result.get("method_order", LODO_METHODS)
    head = ["method", *(f"{s} ({held[s]['edge_model']} → {held[s]['cloud_model']}, n={held[s]['n_prompts']})"
                        for s in held), "mean", "≥ prompt_length (ΔP / AUC)"]  # fmt: skip

    def at_least_length(m: str, key: Callable[[dict], float]) -> int:
        return sum(key(held[s]["methods"][m]) >= key(held[s]["methods"]["prompt_length"]) for s in held)

    rows = []
    for m in order:
        cells = [f"{held[s]['methods'][m]['delta_p']['0.5']:.1f} / {held[s]['methods'][m]['auc']:.1f}" for s in held]
        dp, auc = at_least_length(m, lambda r: r["delta_p"]["0.5"]), at_least_length(m, lambda r: r["auc"])
        rows.append([m, *cells, f"{result['mean'][m]['delta_p_0.5']:.1f} / {result['mean'][m]['auc']:.1f}",
                     f"{dp} / {auc} of {len(held)}"])  # fmt: skip
    return (
        "Leave-one-dataset-out, cells ΔP(50%) / AUC: trained on every other shared set without any prompt of the "
        "held-out set, tested on its natural pair.\n\n" + table(head, rows, align="l" + "r" * (len(head) - 1))
    )


# ---------------------------------------------------------------- model card


def write_multi_card(directory: str | Path, command: str, lodo: dict[str, Any] | None, lodo_source: str | None) -> Path:
    """README.md of a many-model checkpoint: data and design from its config, the LODO table from a result."""
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    size_kb = sum(p.stat().st_size for p in directory.iterdir() if p.is_file() and p.name != "README.md") / 1024
    data = config.get("data", {})
    rows = [[name, n, f"{NATURAL_PAIRS[name].edge} → {NATURAL_PAIRS[name].cloud}" if name in NATURAL_PAIRS else "–"]
            for name, n in data.items()]  # fmt: skip
    lines = [
        "# RouteT2I many-model router checkpoint (`kind: multi`)",
        "",
        "Scores a prompt's cloud advantage for an edge/cloud pair named by canonical model id",
        "(`router_model/model_ids.py`); the gateway serves PRŜ = σ(−advantage) and sends a prompt to the cloud iff",
        "PRŜ < α. Opt-in: set `router_path` to this directory (the gateway's default checkpoint is unchanged).",
        "",
        f"- design: {DESIGN} (`{config.get('head')}`)",
        f"- inputs: features {', '.join(config.get('feature_names', []))}; encoder `{config.get('encoder')}` "
        f"(mean-pooled, {config.get('embed_dim')} dims, referenced by name)",
        f"- heads: {'pair heads for ' + ', '.join(config['models']) if config.get('models') else 'generic only'}",
        f"- checkpoint size: {size_kb:.0f} KB",
        "",
        "## Training data (rated prompts per shared set)",
        "",
        table(["set", "rated prompts", "natural pair"], rows, align="lrl"),
        "",
        "## Leave-one-dataset-out",
        "",
    ]
    regenerate = [command]
    if lodo is not None:
        lines += [
            lodo_markdown(lodo),
            "",
            f"From `{lodo_source}`; the same design, so each column is what this "
            "checkpoint's recipe scores on a set it was not trained on (the checkpoint itself saw every set).",
        ]
        regenerate = [lodo.get("command", "routet2i evaluate --lodo --json " + str(lodo_source)), command]
    else:
        lines += ["Not run for this checkpoint: `routet2i evaluate --lodo --json FILE`, then `--lodo-json FILE`."]
    lines += ["", "## Regenerate", "", "```bash", *regenerate, "```", ""]
    path = directory / "README.md"
    path.write_text("\n".join(lines))
    return path

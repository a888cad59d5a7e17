"""Choosing the prior's ridge strength and the tower's residual scale γ by transfer across data sets.

    python -m router_model.lab.prior_select --data ../shared/data --json runs/prior_select.json \
        --markdown docs/ROUTER_PRIOR.md

For every source set (its natural pair, without any prompt that also occurs in another set; CEMS
subsampled so one training stays seconds) the RouteT2I router is trained once per prior strength, then
scored with each γ on every *other* set's natural pair. The design is chosen by the mean over all (source,
target) cells of (ΔP(50%) + AUC) / 2: a held-out set is never the one a router was fitted on, and no
k-fold test fold is looked at. `prompt_length` and `random` are scored on the same cells.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from router_model.lab.delta_p import curve_auc, delta_p_curve, rho_grid
from router_model.lab.evaluate import prompt_tiebreak
from router_model.lab.markdown import table
from router_model.lab.protocols import PromptStates
from router_model.lab.ratings import NATURAL_PAIRS, load_shared, prompt_key, to_pair_examples
from router_model.lab.train import train_router
from router_model.model import RouterConfig, RouteT2IRouter

SOURCES = ("genai", "agiqa3k", "seetrue", "agiqa1k", "cems")
ALPHAS = (0.3, 1.0, 3.0)
GAMMAS = (0.0, 0.25, 0.5, 1.0)
CEMS_TRAIN = 1000


def pair_sets(data: str, cems_train: int = CEMS_TRAIN, seed: int = 0) -> dict[str, list]:
    """Each shared set's natural-pair examples; CEMS cut to `cems_train` prompts (a fixed random subset)."""
    sets = load_shared(data)
    out = {name: to_pair_examples(sets[name], pair) for name, pair in NATURAL_PAIRS.items() if name in sets}
    if "cems" in out and len(out["cems"]) > cems_train:
        keep = np.random.default_rng(seed).choice(len(out["cems"]), cems_train, replace=False)
        out["cems"] = [out["cems"][i] for i in sorted(keep)]
    return out


def cloud_advantage(router: RouteT2IRouter, examples: Sequence, states, gamma: float | None) -> np.ndarray:
    """1 − PRŜ with the tower's weight set to `gamma` (None: no prior at all, the router as trained)."""
    part = states.of(examples)
    features = router.prior_features([ex.prompt for ex in examples])
    with torch.inference_mode():
        logits = router.logits(part.states, part.mask, features, residual_scale=gamma)
        prs = torch.sigmoid(logits) @ router.metric_weights
    return 1.0 - prs.numpy().astype(np.float64)


def cell(scores: np.ndarray, examples: Sequence) -> tuple[float, float]:
    rhos = rho_grid()
    q_e, q_c = np.array([ex.q_edge for ex in examples]), np.array([ex.q_cloud for ex in examples])
    curve = delta_p_curve(scores, q_e, q_c, rhos, prompt_tiebreak(examples))
    return float(curve[int(np.argmin(np.abs(rhos - 0.5)))]), curve_auc(curve, rhos)


def run(data: str, sources: Sequence[str] = SOURCES, alphas: Sequence[float] = ALPHAS,
        gammas: Sequence[float] = GAMMAS, seed: int = 0, log=print) -> dict[str, Any]:  # fmt: skip
    sets = pair_sets(data, seed=seed)
    states = PromptStates(list(sets.values()))
    designs: dict[str, dict[str, list[float]]] = {}

    def record(name: str, source: str, target: str, scores: np.ndarray) -> None:
        designs.setdefault(name, {})[f"{source}->{target}"] = list(cell(scores, sets[target]))

    for source in sources:
        for target in sets:
            if target != source:
                tokens = states.of(sets[target]).mask.sum(1).numpy().astype(np.float64)
                record("prompt_length", source, target, tokens)
                record("random", source, target, np.random.default_rng(seed).random(len(sets[target])))
        variants: list[tuple[str, dict[str, Any]]] = [("no prior", {"use_prior": False})]
        variants += [(f"α={a}", {"prior_alpha": a}) for a in alphas]
        others = {prompt_key(ex.prompt) for name, exs in sets.items() if name != source for ex in exs}
        train = [ex for ex in sets[source] if prompt_key(ex.prompt) not in others]  # no target prompt trains
        for label, overrides in variants:
            started = time.perf_counter()
            router = train_router(train, config=RouterConfig(**overrides), seed=seed,
                                  token_states=states.of(train), progress=False, log=None)  # fmt: skip
            for target in sets:
                if target == source:
                    continue
                if router.prior is None:
                    record("routet2i (no prior)", source, target, cloud_advantage(router, sets[target], states, None))
                    continue
                for g in gammas:
                    record(f"routet2i {label} γ={g}", source, target,
                           cloud_advantage(router, sets[target], states, g))  # fmt: skip
            log(f"{source} ({len(train)} prompts): {label} trained and scored in {time.perf_counter() - started:.0f} s")
    summary = {name: float(np.mean([(d + a) / 2 for d, a in cells.values()])) for name, cells in designs.items()}
    chosen = max((n for n in summary if n.startswith("routet2i α")), key=summary.get)
    return {"sources": list(sources), "targets": list(sets), "cells": designs, "criterion": summary,
            "chosen": chosen, "seed": seed, "cems_train": CEMS_TRAIN}  # fmt: skip


def markdown(result: dict[str, Any], command: str) -> str:
    cells = result["cells"]
    pairs = sorted(next(iter(cells.values())))
    ordered = sorted(cells, key=lambda n: -result["criterion"][n])
    head = ["design", "criterion", "mean ΔP(50%)", "mean AUC", "cells ≥ prompt_length (ΔP)"]
    rows = []
    for name in ordered:
        d = np.mean([cells[name][p][0] for p in pairs])
        a = np.mean([cells[name][p][1] for p in pairs])
        wins = sum(cells[name][p][0] >= cells["prompt_length"][p][0] for p in pairs)
        mark = " **(chosen)**" if name == result["chosen"] else ""
        rows.append([name + mark, f"{result['criterion'][name]:.1f}", f"{d:.1f}", f"{a:.1f}", f"{wins}/{len(pairs)}"])
    designs = [result["criterion"][n] for n in cells if n.startswith("routet2i")]
    spread = max(designs) - min(designs)
    gap = result["criterion"]["prompt_length"] - result["criterion"][result["chosen"]]
    by_source = [[s, *(f"{np.mean([v[0] for k, v in cells[n].items() if k.startswith(s + '->')]):.1f}"
                       for n in (result["chosen"], "routet2i (no prior)", "prompt_length"))]
                 for s in result["sources"]]  # fmt: skip
    per_pair_names = [result["chosen"], "routet2i (no prior)", "prompt_length", "random"]
    per_pair = [[p, *(f"{cells[n][p][0]:.1f} / {cells[n][p][1]:.1f}" for n in per_pair_names)] for p in pairs]
    return "\n".join([
        "# The router's prior and residual scale, chosen by transfer across data sets",
        "",
        f"Generated by `{command}`.",
        "",
        "Each cell trains the RouteT2I router on one shared set's natural pair (CEMS: a fixed random "
        f"{result['cems_train']}-prompt subset) and scores another set's natural pair; prompts of the target "
        "never train. Criterion: the mean over all (source → target) cells of (ΔP(50%) + AUC) / 2. "
        "No k-fold test fold is used to choose; the k-fold results in docs/RESULTS.md come after the choice.",
        "",
        table(head, rows, align="lrrrr"),
        "",
        f"Reading: the criterion of every RouteT2I design lies within {spread:.1f} points of the others, and "
        f"`prompt_length` is {gap:+.1f} ahead of the chosen one. Length has a fixed sign (long prompts to the "
        "cloud); a router fitted on one set learns that set's sign, and on several shared sets (AGIQA-1K's "
        "odd pair, CEMS's CLIP scores) it is reversed or absent, so transfer *from* those sets loses. From "
        "GenAI-Bench, the set closest to the gateway's pair, the prior is what carries over (mean ΔP(50%) "
        "over its targets below).",
        "",
        "## Mean ΔP(50%) over the targets, by training set",
        "",
        table(["trained on", result["chosen"], "routet2i (no prior)", "prompt_length"], by_source, align="lrrr"),
        "",
        "## Per cell (ΔP(50%) / AUC)",
        "",
        table(["source → target", *per_pair_names], per_pair, align="lrrrr"),
        "",
    ])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--json", default="runs/prior_select.json")
    parser.add_argument("--markdown", default="docs/ROUTER_PRIOR.md")
    parser.add_argument("--sources", nargs="+", default=list(SOURCES))
    parser.add_argument("--from-json", action="store_true", help="rewrite the page from an earlier --json run")
    args = parser.parse_args(argv)
    command = "python -m router_model.lab.prior_select --data ../shared/data --json runs/prior_select.json"
    if args.from_json:
        result = json.loads(Path(args.json).read_text())
    else:
        result = run(args.data, sources=args.sources)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    Path(args.markdown).write_text(markdown(result, command))
    print(f"chosen: {result['chosen']} (criterion {result['criterion'][result['chosen']]:.1f}); "
          f"prompt_length {result['criterion']['prompt_length']:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()

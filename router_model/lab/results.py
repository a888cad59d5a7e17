"""An evaluation result written out: strict JSON, and the markdown tables of the CLI and the results page."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from router_model.lab.delta_p import TARGETS, rho_key
from router_model.lab.markdown import number, table

TABLE_RHOS = (0.25, 0.5, 0.75)


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


def markdown_table(result: dict[str, Any]) -> str:
    """ΔP at ρ = 0.25/0.5/0.75 (± std over folds), AUC, reductions at ΔP 40/50/60/80, per-dimension at ρ = 0.5."""
    rho_cols = [rho_key(r) for r in TABLE_RHOS]
    head = ["method"] + [f"ΔP({float(r):.0%})" for r in TABLE_RHOS] + ["AUC"]
    head += [f"red.@{t}" for t in TARGETS]
    rows = []
    for name, m in result["methods"].items():
        cells = [name]
        for key in rho_cols:
            cells.append(f"{number(m['delta_p'].get(key))} ± {number(m['delta_p_std'].get(key))}")
        cells.append(f"{number(m['auc'])} ± {number(m.get('auc_std'))}")
        cells += [number(m["cloud_call_reduction"].get(str(t)), 1) for t in TARGETS]
        rows.append(cells)
    dims = result["dims"]
    per_dim = [[name] + [number(row[d], 4) for d in dims] for name, row in result["per_dimension"].items()]
    return (
        "\n".join(
            [
                table(head, rows, align="l" * len(head)),
                "",
                f"Per-dimension mean quality at ρ = 50% ({', '.join(dims)}):",
                "",
                table(["route", *dims], per_dim, align="l" * (len(dims) + 1)),
            ]
        )
        + "\n"
    )


def protocol_line(result: dict[str, Any]) -> str:
    """How the numbers were made, in a few words (k-fold, train/test with what dropped, or checkpoint only)."""
    mode = result.get("mode", "k-fold")
    if mode == "k-fold":
        return f"{result['folds']}-fold CV × {result.get('repeats', 1)} split seeds"
    if mode == "checkpoint":
        skipped = result.get("skipped") or []
        return f"a given checkpoint on {result['n_prompts']} test prompts, no training data" + (
            f"; skipped (need training): {', '.join(skipped)}" if skipped else ""
        )
    sizes = result.get("train_set_sizes")
    sets = f" from {len(sizes)} set(s) of {', '.join(map(str, sizes))}" if sizes else ""
    dropped = result.get("n_train_dropped")
    dropped_note = f", {dropped} dropped as test prompts" if dropped is not None else ""
    return f"trained on {result['n_train_prompts']} examples{sets}{dropped_note}; tested on {result['n_prompts']}"


def _bootstrap_block(b: dict[str, Any]) -> str:
    rows = [
        [
            label,
            f"{b[key]['mean_diff']:+.2f}",
            f"[{b[key]['ci_low']:+.2f}, {b[key]['ci_high']:+.2f}]",
            f"{b[key]['win_share']:.1%}",
        ]
        for key, label in (("delta_p_0.5", "ΔP(50%)"), ("auc", "AUC"))
    ]
    head = ["statistic", "mean difference", "95% CI", f"share of resamples where {b['method']} wins"]
    intro = (
        f"Paired bootstrap over test prompts ({b['delta_p_0.5']['resamples']} resamples, seed {b['seed']}, "
        f"{b['pooled']}): **{b['method']} − {b['baseline']}** ({b.get('why', 'the best baseline by ΔP(50%)')})."
    )
    return f"{intro}\n\n{table(head, rows, align='llll')}\n"


def bootstrap_markdown(result: dict[str, Any]) -> str:
    """The paired bootstraps of the router (or the best learned method) against the best baseline and
    against `prompt_length`, each as a sentence and a table."""
    blocks = [b for b in (result.get("bootstrap"), result.get("bootstrap_prompt_length")) if b]
    if not blocks:
        return "No paired bootstrap (RouteT2I or a baseline was not evaluated).\n"
    if len(blocks) == 2 and blocks[0]["baseline"] == blocks[1]["baseline"]:
        blocks = blocks[:1]  # prompt_length is the best baseline: one table says both
    return "\n".join(_bootstrap_block(b) for b in blocks)

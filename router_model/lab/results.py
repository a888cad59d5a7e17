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


def bootstrap_markdown(result: dict[str, Any]) -> str:
    """The paired bootstrap of the router against the best baseline, as a sentence and a table."""
    b = result.get("bootstrap")
    if not b:
        return "No paired bootstrap (RouteT2I or a baseline was not evaluated).\n"
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
        f"{b['pooled']}): **{b['method']} − {b['baseline']}** (the best baseline by ΔP(50%))."
    )
    return f"{intro}\n\n{table(head, rows, align='llll')}\n"

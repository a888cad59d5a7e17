"""Issue 11's targets, each checked against the results of the page run (met / missed / not run).

Targets (ΔP at ρ = 50%):
- GenAI-Bench SD 2.1 → DALL·E 3, k-fold with repeats: ≥ 80, ahead of every baseline, and the 95% bootstrap
  CI of (routet2i − prompt_length) above 0.
- Leave-one-dataset-out: on each of the five target sets, routet2i ≥ prompt_length on ΔP(50%) and on AUC.
- CEMS SD-Turbo → SDXL-Turbo (CLIP + NIMA, k-fold): ≥ 84, ahead of every baseline, CI (vs the best
  baseline) above 0.
"""

from __future__ import annotations

from typing import Any

from router_model.lab.evaluate import NOT_BASELINES
from router_model.lab.markdown import table
from router_model.lab.report_sets import TARGET_SETS
from router_model.lab.report_transfer import wins_vs_length

GENAI_KFOLD_SLUG = "genai_sd21_dalle3"
GENAI_TARGET, CEMS_TARGET = 80.0, 84.0
REFERENCE = "routet2i"


def _kfold_check(result: dict[str, Any] | None, target: float, ci_key: str) -> tuple[str, str]:
    """(status, evidence) of: ΔP(50%) ≥ target, ahead of every baseline, bootstrap CI under `ci_key` above 0."""
    if result is None or REFERENCE not in result["methods"]:
        return "not run", "no k-fold result with routet2i"
    methods = result["methods"]
    ours = methods[REFERENCE]["delta_p"]["0.5"]
    baselines = [m for m in methods if m not in NOT_BASELINES]
    best = max(baselines, key=lambda m: methods[m]["delta_p"]["0.5"]) if baselines else None
    ahead = best is None or ours > methods[best]["delta_p"]["0.5"]
    boot = result.get(ci_key) or (result.get("bootstrap") if ci_key == "bootstrap_prompt_length" else None)
    if boot and ci_key == "bootstrap_prompt_length" and boot.get("baseline") != "prompt_length":
        boot = None
    ci_low = boot["delta_p_0.5"]["ci_low"] if boot else None
    ok = ours >= target and ahead and ci_low is not None and ci_low > 0
    best_text = f"best baseline {best} {methods[best]['delta_p']['0.5']:.2f}" if best else "no baseline"
    ci_text = (
        f"95% CI of routet2i − {boot['baseline']} [{ci_low:+.2f}, {boot['delta_p_0.5']['ci_high']:+.2f}]"
        if boot
        else "no bootstrap"
    )
    return ("met" if ok else "missed"), f"routet2i {ours:.2f} (target ≥ {target:g}); {best_text}; {ci_text}"


def _lodo_check(lodo: dict[str, Any] | None) -> tuple[str, str]:
    held = (lodo or {}).get("held_out", {})
    if not any(REFERENCE in r["methods"] for r in held.values()):
        return "not run", "no leave-one-dataset-out result with routet2i"
    wins = wins_vs_length(held, TARGET_SETS)
    missing = [s for s in TARGET_SETS if s not in wins["sets"]]
    lost = [
        f"{s} ({', '.join(k for k in ('delta_p', 'auc') if not wins['sets'][s][k])})"
        for s in TARGET_SETS
        if s in wins["sets"] and not (wins["sets"][s]["delta_p"] and wins["sets"][s]["auc"])
    ]
    ok = not missing and not lost
    evidence = f"routet2i ≥ prompt_length on both on {wins['both_wins']} of {len(TARGET_SETS)} sets"
    if lost:
        evidence += "; behind on " + "; ".join(lost).replace("delta_p", "ΔP").replace("auc", "AUC")
    if missing:
        evidence += f"; not evaluated: {', '.join(missing)}"
    return ("met" if ok else "missed"), evidence


def check_targets(kfold: dict[str, dict[str, Any]], lodo: dict[str, Any] | None, cems: dict[str, Any] | None):
    """Rows (target, status, evidence) computed from the section results (`kfold`: result per pair slug)."""
    genai = _kfold_check(kfold.get(GENAI_KFOLD_SLUG), GENAI_TARGET, "bootstrap_prompt_length")
    cems_row = _kfold_check(cems, CEMS_TARGET, "bootstrap")
    return [
        (
            "GenAI-Bench SD 2.1 → DALL·E 3, k-fold: ΔP(50%) ≥ 80, ahead of every baseline, "
            "CI of routet2i − prompt_length above 0",
            *genai,
        ),
        (
            "Leave-one-dataset-out: routet2i ≥ prompt_length on ΔP(50%) and AUC on " + ", ".join(TARGET_SETS),
            *_lodo_check(lodo),
        ),  # fmt: skip
        (
            "CEMS SD-Turbo → SDXL-Turbo (CLIP + NIMA), k-fold: ΔP(50%) ≥ 84, ahead of every baseline, "
            "CI vs the best baseline above 0",
            *cems_row,
        ),
    ]


def targets_markdown(rows: list[tuple[str, str, str]]) -> str:
    body = [[target, f"**{status}**", evidence] for target, status, evidence in rows]
    return "\n".join([
        "## Issue 11's targets",
        "",
        "Computed from the results below at every page build (a target not run this time says so).",
        "",
        table(["target", "status", "from the results"], body, align="lll"),
        "",
    ])  # fmt: skip

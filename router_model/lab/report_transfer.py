"""The cross-set sections of the results page: GenAI-trained transfer to every other set, and
leave-one-dataset-out (LODO) over the shared sets' natural pairs.

Both run `protocols.evaluate_transfer` (test prompts never train) with one `PromptStates` for every set,
and keep the whole result dict per target set; the tables are written from those dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from router_model.lab.evaluate import NOT_BASELINES
from router_model.lab.markdown import number, table
from router_model.lab.protocols import PromptStates, evaluate_transfer
from router_model.lab.ratings import NATURAL_PAIRS
from router_model.lab.report_sets import CEMS, TARGET_SETS, TRANSFER_SOURCE, SharedSets, training_view

REFERENCE = "routet2i"
LENGTH = "prompt_length"


def _pair_label(name: str) -> str:
    pair = NATURAL_PAIRS[name]
    return f"{name} ({pair.edge} → {pair.cloud})"


def run_transfer(
    sets: SharedSets,
    states: PromptStates,
    *,
    methods: Sequence[str] | None,
    seed: int,
    bootstrap: int,
    log: Callable[..., Any],
    save: Callable[[dict[str, Any]], None] = lambda _partial: None,
) -> dict[str, Any]:
    """Train on GenAI SD 2.1 → DALL·E 3 (all its prompts), test on every other set's natural pair.

    `save` gets the section so far after every target (a run cut short keeps what it finished)."""
    targets: dict[str, Any] = {}
    for name, test in sets.pairs.items():
        if name == TRANSFER_SOURCE:
            continue
        log(f"transfer: {TRANSFER_SOURCE} → {name} ({len(test)} prompts)")
        targets[name] = evaluate_transfer(
            [sets.pairs[TRANSFER_SOURCE]], test, methods=methods, prompt_states=states, seed=seed,
            bootstrap=bootstrap, log=None,
        )  # fmt: skip
        save({"protocol": "transfer", "train": TRANSFER_SOURCE, "targets": targets, "complete": False})
    return {"protocol": "transfer", "train": TRANSFER_SOURCE, "targets": targets, "complete": True}


def run_lodo(
    sets: SharedSets,
    states: PromptStates,
    *,
    methods: Sequence[str] | None,
    seed: int,
    bootstrap: int,
    log: Callable[..., Any],
    save: Callable[[dict[str, Any]], None] = lambda _partial: None,
    held_out: Sequence[str] | None = None,
) -> dict[str, Any]:
    """For each set (or each of `held_out`, in that order): train on the union of the other sets' natural pairs
    (cut to their training subsets), test on it. `save` gets the section so far after every held-out set."""
    held: dict[str, Any] = {}
    for name in held_out or list(sets.pairs):
        test = sets.pairs[name]
        others = [training_view(sets, other) for other in sets.pairs if other != name]
        log(f"lodo: held out {name} ({len(test)} prompts), training on {sum(map(len, others))} examples")
        held[name] = evaluate_transfer(
            others, test, methods=methods, prompt_states=states, seed=seed, bootstrap=bootstrap, log=None
        )
        save({"protocol": "lodo", "held_out": held, "complete": False})
    return {"protocol": "lodo", "held_out": held, "complete": True}


# ---------------------------------------------------------------- tables


def _methods(results: dict[str, dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(m for r in results.values() for m in r["methods"]))


def _cell(result: dict[str, Any], method: str) -> str:
    m = result["methods"].get(method)
    return "—" if m is None else f"{number(m['delta_p']['0.5'], 1)} / {number(m['auc'], 1)}"


def _ci(result: dict[str, Any]) -> str:
    """routet2i − prompt_length ΔP(50%) with its 95% CI, or a dash without that bootstrap."""
    b = result.get("bootstrap_prompt_length") or (
        result.get("bootstrap") if (result.get("bootstrap") or {}).get("baseline") == LENGTH else None
    )
    if not b or b.get("method") != REFERENCE:
        return "—"
    d = b["delta_p_0.5"]
    return f"{d['mean_diff']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}]"


def per_set_table(results: dict[str, dict[str, Any]]) -> str:
    """Methods as rows, sets as columns, cells ΔP(50%) / AUC; a last row with the bootstrap CI vs prompt_length."""
    names = list(results)
    rows = [[m, *(_cell(results[n], m) for n in names)] for m in _methods(results)]
    rows.append([f"{REFERENCE} − {LENGTH}: ΔP(50%) [95% CI]", *(_ci(results[n]) for n in names)])
    head = ["method", *(f"{_pair_label(n)}, n={results[n]['n_prompts']}" for n in names)]
    return table(head, rows, align="l" * (len(names) + 1))


def wins_vs_length(results: dict[str, dict[str, Any]], sets: Sequence[str] | None = None) -> dict[str, Any]:
    """Per set: does routet2i reach prompt_length on ΔP(50%) and on AUC? Counts over `sets` (default: all)."""
    out: dict[str, Any] = {"sets": {}}
    for name, r in results.items():
        ours, length = r["methods"].get(REFERENCE), r["methods"].get(LENGTH)
        if ours is None or length is None:
            continue
        out["sets"][name] = {
            "delta_p": ours["delta_p"]["0.5"] >= length["delta_p"]["0.5"],
            "auc": ours["auc"] >= length["auc"],
        }
    chosen = [s for s in out["sets"] if sets is None or s in sets]
    out["n"] = len(chosen)
    out["delta_p_wins"] = sum(out["sets"][s]["delta_p"] for s in chosen)
    out["auc_wins"] = sum(out["sets"][s]["auc"] for s in chosen)
    out["both_wins"] = sum(out["sets"][s]["delta_p"] and out["sets"][s]["auc"] for s in chosen)
    return out


def means_table(results: dict[str, dict[str, Any]]) -> str:
    """Mean ΔP(50%) and AUC per method over every held-out set and over the five sets of the issue's target."""
    groups = {"all sets": list(results), "the five target sets": [s for s in TARGET_SETS if s in results]}
    rows = []
    for m in _methods(results):
        cells = [m]
        for members in groups.values():
            have = [results[s]["methods"][m] for s in members if m in results[s]["methods"]]
            cells += [number(float(np.mean([h["delta_p"]["0.5"] for h in have])), 1) if have else "—"]
            cells += [number(float(np.mean([h["auc"] for h in have])), 1) if have else "—"]
        rows.append(cells)
    head = ["method"] + [f"{stat} ({g})" for g in groups for stat in ("mean ΔP(50%)", "mean AUC")]
    return table(head, rows)


def _best_baseline_line(results: dict[str, dict[str, Any]]) -> str:
    """Which baseline has the highest mean ΔP(50%) over the sets, against routet2i's mean."""
    methods = _methods(results)
    if REFERENCE not in methods:
        return ""
    mean = {m: float(np.mean([r["methods"][m]["delta_p"]["0.5"] for r in results.values()])) for m in methods}
    baselines = [m for m in methods if m not in NOT_BASELINES]
    if not baselines:
        return ""
    best = max(baselines, key=mean.get)
    return (
        f"Mean ΔP(50%) over the {len(results)} sets: {REFERENCE} {mean[REFERENCE]:.1f}, the best baseline "
        f"{best} {mean[best]:.1f} ({'ahead' if mean[REFERENCE] > mean[best] else 'behind'})."
    )


def partial_note(section: dict[str, Any], done: dict[str, Any]) -> str:
    """A warning when the run that wrote `section` stopped before every set was done."""
    if section.get("complete", True):
        return ""
    return f"**Partial:** the run stopped before every set was done; only {', '.join(done)} finished.\n"


def transfer_markdown(section: dict[str, Any]) -> str:
    targets = section["targets"]
    train_n = next(iter(targets.values()))["train_set_sizes"][0] if targets else 0
    return "\n".join([
        "## Cross-set transfer: trained on GenAI-Bench SD 2.1 → DALL·E 3",
        "",
        f"Every learned method is trained once per target on the {train_n} GenAI-Bench SD 2.1 → DALL·E 3 prompts, "
        "less any that is also a test prompt of the target (`protocols.evaluate_transfer`; dropped per target: "
        + ", ".join(f"{n} {r['n_train_dropped']}" for n, r in targets.items())
        + "), then scores every other shared set's natural pair. Cells: ΔP(50%) / AUC. The last row is the paired "
        "bootstrap of routet2i − prompt_length on the target's prompts. Raw result: [`transfer.json`](transfer.json).",
        "",
        partial_note(section, targets),
        _best_baseline_line(targets),
        "",
        per_set_table(targets),
        "",
    ])  # fmt: skip


def lodo_markdown(section: dict[str, Any]) -> str:
    held = section["held_out"]
    wins_all, wins5 = wins_vs_length(held), wins_vs_length(held, TARGET_SETS)
    cems_note = section.get("cems_note", "")
    return "\n".join([
        "## Leave-one-dataset-out",
        "",
        "For each shared set with a natural pair: every learned method is trained on the union of the other sets' "
        "natural pairs (each set z-scored on its own scale, `training_sets.merge_training_sets`; prompts of the "
        f"held-out set dropped) and tested on the held-out pair. {cems_note} Cells: ΔP(50%) / AUC. "
        "Raw result: [`lodo.json`](lodo.json).",
        "",
        partial_note(section, held),
        f"routet2i ≥ prompt_length on ΔP(50%) on {wins_all['delta_p_wins']} of {wins_all['n']} sets and on AUC on "
        f"{wins_all['auc_wins']} of {wins_all['n']}; on both, on {wins5['both_wins']} of the {wins5['n']} target sets "
        f"({', '.join(TARGET_SETS)}).",
        "",
        _best_baseline_line(held),
        "",
        per_set_table(held),
        "",
        "Means over the held-out sets:",
        "",
        means_table(held),
        "",
    ])  # fmt: skip


def cems_lodo_note(sets: SharedSets) -> str:
    """How the training sets of LODO are cut (fixed random subsets, so that one held-out set trains in minutes)."""
    notes = []
    cut = sets.sizes.other_train
    if cut and any(len(v) < len(sets.pairs[n]) for n, v in sets.train_views.items()):
        notes.append(
            f"As training data every set is cut to a fixed random subset of at most {cut} prompts (seed "
            f"{sets.seed}) so that one held-out set trains in minutes on 2 shared CPU cores; held out, a set is "
            "tested on all its prompts."
        )
    if CEMS in sets.pairs:
        notes.append(
            f"CEMS trains as a fixed random subset of {len(sets.cems_train)} of its {sets.cems_total} prompts "
            f"(seed {sets.seed}); held out, it is tested on {len(sets.pairs[CEMS])} prompts."
        )
    return " ".join(notes)

"""Markdown tables from lodo.py's JSON: per held-out set ΔP(50%) / AUC, means, and the selection score.

Selection rule (fixed before looking at results): rank designs by the mean over all held-out sets of
(ΔP(50%) + AUC) / 2. The five sets the issue's targets name are averaged separately as "mean5".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

TARGET_SETS = ("genai", "agiqa3k", "geneval", "seetrue", "aigciqa2023")


def lodo_rows(lodo: dict) -> list[tuple[str, dict]]:
    sets = list(lodo)
    methods = list(dict.fromkeys(m for s in sets for m in lodo[s] if m != "n"))
    rows = []
    for m in methods:
        dp = {s: lodo[s][m]["dp50"] for s in sets if m in lodo[s]}
        auc = {s: lodo[s][m]["auc"] for s in sets if m in lodo[s]}
        sel = float(np.mean([(dp[s] + auc[s]) / 2 for s in dp]))
        rows.append((m, {"dp": dp, "auc": auc, "sel": sel,
                         "mean5_dp": float(np.mean([dp[s] for s in TARGET_SETS if s in dp])),
                         "mean5_auc": float(np.mean([auc[s] for s in TARGET_SETS if s in auc])),
                         "wins5": sum(dp[s] >= dp_len and auc[s] >= auc_len for s, dp_len, auc_len in
                                      ((s, lodo[s]["prompt_length"]["dp50"], lodo[s]["prompt_length"]["auc"])
                                       for s in TARGET_SETS if s in dp))}))  # fmt: skip
    return sorted(rows, key=lambda r: (len(r[1]["dp"]) < len(sets), -r[1]["sel"]))  # partial rows last


def markdown(lodo: dict) -> str:
    sets = list(lodo)
    head = "| design | " + " | ".join(f"{s} (n={lodo[s]['n']})" for s in sets)
    head += " | mean5 ΔP / AUC | ≥ length on (of 5) | selection |\n"
    head += "|---" * (len(sets) + 4) + "|\n"
    lines = []
    for m, r in lodo_rows(lodo):
        cells = " | ".join(f"{r['dp'][s]:.1f} / {r['auc'][s]:.1f}" if s in r["dp"] else "–" for s in sets)
        if len(r["dp"]) < len(sets):
            m += f" (partial: {len(r['dp'])} sets)"
        lines.append(f"| {m} | {cells} | {r['mean5_dp']:.1f} / {r['mean5_auc']:.1f} | {r['wins5']} | {r['sel']:.1f} |")
    return head + "\n".join(lines) + "\n"


def kfold_markdown(res: dict) -> str:
    lines = ["| design | ΔP(50%) mean ± sd | AUC mean ± sd |", "|---|---|---|"]
    rows = []
    for m, folds in res.items():
        dp = np.array([f["dp50"] for f in folds])
        auc = np.array([f["auc"] for f in folds])
        rows.append((dp.mean(), f"| {m} | {dp.mean():.1f} ± {dp.std():.1f} | {auc.mean():.1f} ± {auc.std():.1f} |"))
    return "\n".join(lines + [r for _, r in sorted(rows, key=lambda x: -x[0])]) + "\n"


if __name__ == "__main__":
    for path in sys.argv[1:]:
        data = json.loads(Path(path).read_text())
        for key, value in data.items():
            print(f"## {path}: {key}\n")
            print(markdown(value) if key == "lodo" else kfold_markdown(value))

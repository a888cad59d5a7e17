"""Plots of an evaluation: ΔP against the cloud budget, and win rates by noun count."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router_model.lab.baselines import ABLATIONS
from router_model.lab.data import RoutingExample


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

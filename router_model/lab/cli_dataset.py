"""`routet2i dataset stats` and `dataset analyze`: read-only summaries of ratings files and routing datasets."""

from __future__ import annotations

import argparse
import json

from router_model.lab.markdown import table


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


# ---------------------------------------------------------------- dataset


def cmd_dataset_stats(args: argparse.Namespace) -> int:
    from router_model.lab.data import read_examples
    from router_model.lab.summary import detect_source, pair_summary, source_model_means

    source = detect_source(args.path)
    if source == "jsonl":
        s = pair_summary(read_examples(args.path))
        if args.json:
            print(json.dumps(s, indent=2))
            return 0
        print(f"{args.path}: {s['edge']} (edge) → {s['cloud']} (cloud), {s['prompts']} prompts, metrics {s['metrics']}")
        print(f"  mean edge quality:  {_fmt(s['mean_edge'])}")
        print(f"  mean cloud quality: {_fmt(s['mean_cloud'])}")
        print(f"  cloud better per metric: {_fmt(s['cloud_better_per_metric'])}")
        print(
            f"  by PRS: cloud wins {s['cloud_wins']:.1%}, edge wins {s['edge_wins']:.1%}, ties {s['ties']:.1%}, "
            f"mean PRS {s['mean_prs']:.3f}"
        )
        return 0
    means = source_model_means(args.path, source)
    if args.json:
        print(json.dumps(means, indent=2))
        return 0
    dims = [k for k in next(iter(means.values())) if k != "n"]
    print(f"{args.path} ({source}): mean rating per model")
    rows = [[model, row["n"], *(f"{row[d]:.3f}" for d in dims)] for model, row in means.items()]
    print(table(["model", "prompts" if source in ("ratings", "rated") else "images", *dims], rows))
    return 0


def cmd_dataset_analyze(args: argparse.Namespace) -> int:
    from router_model.lab.data import read_examples
    from router_model.lab.noun_buckets import noun_bucket_table

    examples = read_examples(args.path)
    rows = noun_bucket_table(examples)
    print(f"{args.path}: {examples[0].edge_model} → {examples[0].cloud_model}, cloud win rate by noun count")
    cells = [
        [r["bucket"], r["n"], f"{r['cloud_win_rate']:.1%}", f"{r['edge_win_rate']:.1%}", r["ties"], _fmt(r["mean_gap"])]
        for r in rows
        if r["n"]
    ]
    head = ["nouns", "prompts", "cloud wins", "edge wins", "ties", "mean gap (cloud − edge)"]
    print(table(head, cells, align="lrrrrl"))
    return 0


# ---------------------------------------------------------------- router

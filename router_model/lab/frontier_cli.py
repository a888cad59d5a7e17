"""`routet2i frontier`: the offline quality–cost frontier of N-arm routing on rated data (a thin shell)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_frontier(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(2)
    if args.page:
        from router_model.lab.frontier_page import write_page

        page = write_page(args.data, args.page, args.cache, bootstrap=args.bootstrap)
        print(f"wrote {page}")
        return 0
    if not args.test or not args.json:
        raise ValueError("frontier needs --test FILE and --json OUT (or --page PAGE)")
    from router_model.lab.frontier import run_frontier

    result = run_frontier(
        args.test,
        args.train or (),
        args.costs,
        args.dimension,
        args.folds,
        args.cache,
        args.bootstrap,
        args.seed,
        args.predictor,
    )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    if args.plot:
        from router_model.lab.frontier import curves_of
        from router_model.lab.frontier_page import plot_frontier

        plot_frontier(curves_of(result), f"{result['dataset']}: {result['prompts']} prompts", "cost", args.plot)
    m = result["margins"]
    print(
        f"{result['dataset']}: {result['prompts']} prompts, {len(result['models'])} models; n_arm − two_arm "
        f"{m['vs_two_arm_mean']['estimate']:+.3f}, n_arm − length_policy {m['vs_length_policy_mean']['estimate']:+.3f} "
        f"(mean over matched costs); wrote {out}"
    )
    return 0


def add_frontier_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("frontier", help="quality–cost frontier of single models, mixes and N-arm routers on rated data")
    p.add_argument("--test", help="ratings file: long format (.csv/.csv.gz), GenAI-Bench JSON or AGIQA-3K CSV")
    p.add_argument("--train", nargs="*", help="more ratings files to train on (the test fold's prompts removed)")
    p.add_argument(
        "--costs", nargs="+", metavar="MODEL=COST",
        help="cost per image of each model to route among (raw or canonical name); default: measured seconds",
    )  # fmt: skip
    p.add_argument("--dimension", help="one quality dimension (default: the mean over the set's dimensions)")
    p.add_argument("--folds", type=int, default=5, help="k-fold over the test file's prompts")
    p.add_argument("--json", help="output JSON: {'methods': {NAME: {'points': [{'cost', 'quality'}]}}, ...}")
    p.add_argument("--plot", help="output PNG of every curve")
    p.add_argument("--bootstrap", type=int, default=200, help="resamples for the margins' CIs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--predictor", choices=["auto", "irt", "ridge"], default="auto",
        help="per-model quality predictor: IRT, cheap-feature ridge + embedding residual, or chosen per fold (auto)",
    )  # fmt: skip
    p.add_argument("--cache", default="runs/inputs.npz", help="encoder input cache (prompts.json beside it)")
    p.add_argument("--page", help="run the four public sets and write this markdown page (docs/FRONTIER.md)")
    p.add_argument("--data", default="../shared/data", help="shared data folder (for --page)")
    p.set_defaults(func=cmd_frontier)

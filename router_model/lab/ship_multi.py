"""Train the chosen many-model router on every shared rated set and save it as a checkpoint.

python -m router_model.lab.ship_multi --design ridge --out runs/multi_router
"""

from __future__ import annotations

import argparse
import json
import time

from router_model.features import FEATURE_NAMES
from router_model.lab.lodo import load_inputs
from router_model.lab.ratings import load_shared
from router_model.lab.train_multi import train_on_sets
from router_model.multi_router import MultiRouterConfig


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--cache", default="runs/inputs.npz")
    ap.add_argument("--design", choices=("ridge", "irt"), default="ridge")
    ap.add_argument("--length-blend", type=float, default=0.0)
    ap.add_argument("--nouns", action="store_true", help="keep the spaCy noun count (LODO winner drops it)")
    ap.add_argument("--out", default="runs/multi_router")
    args = ap.parse_args(argv)
    sets = load_shared(args.data)
    inputs = load_inputs(args.data, args.cache)
    t = time.perf_counter()
    if args.design == "ridge":
        names = FEATURE_NAMES if args.nouns else tuple(n for n in FEATURE_NAMES if n != "log_nouns")
        model = train_on_sets(
            sets, "ridge", inputs, alpha=0.1, pairs_mode="all", length_blend=args.length_blend, feature_names=names
        )
    else:
        model = train_on_sets(
            sets, "irt", inputs, config=MultiRouterConfig(tower="mlp", length_blend=args.length_blend)
        )
    seconds = time.perf_counter() - t
    model.save_pretrained(args.out)
    print(json.dumps({"out": args.out, "train_seconds": round(seconds, 1), "data": model.config.data}))


if __name__ == "__main__":
    main()

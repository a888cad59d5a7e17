"""Wall time of `routet2i evaluate --data` (5-fold, every default method) per method and fold, on CEMS and GenAI.

For each pair: the dataset is imported with the project's own command when missing, its prompts are
encoded once into a fresh token-state cache (timed), read back from it (timed: what a re-run pays), and
`evaluate` runs every default method with per-method, per-fold wall times. "Before" is measured on the
same fold: one RouteT2I head with the unscaled schedule (`scale=False`: today's loop, whole batches,
validation once per epoch) for `--legacy-epochs` epochs, so the table shows seconds per epoch per member
and the least an unscaled fold costs (patience + 1 epochs for each of the members).

    python -m bench.train_scaling                       # both pairs, writes its section of docs/BENCHMARKS.md
    python -m bench.train_scaling --pairs genai --no-markdown
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.markdown import add_output_arguments, publish, run_note
from router_model.lab.markdown import table

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PAIRS: dict[str, dict[str, str]] = {
    "cems": {
        "title": "CEMS SD-Turbo → SDXL-Turbo (CLIP + NIMA)",
        "source": "ratings",
        "input": "ratings/cems_10k.csv.gz",
        "edge": "SD-Turbo",
        "cloud": "sdxl-turbo",
        "out": "runs/data/cems_turbo.jsonl",
    },
    "genai": {
        "title": "GenAI-Bench SD 2.1 → DALL·E 3",
        "source": "genai-bench",
        "input": "genai_bench_ratings.json",
        "edge": "SDXL_2_1",
        "cloud": "DALLE_3",
        "out": "runs/data/genai_sd21_dalle3.jsonl",
    },
}


def import_command(pair: dict[str, str], data_dir: Path) -> list[str]:
    return [
        "routet2i", "dataset", "import", "--source", pair["source"], "--input", str(data_dir / pair["input"]),
        "--edge", pair["edge"], "--cloud", pair["cloud"], "--out", pair["out"],
    ]  # fmt: skip


def ensure_dataset(pair: dict[str, str], data_dir: Path, work: Path) -> Path:
    """The pair's routing dataset under `work`, imported with `routet2i dataset import` when it is not there yet."""
    out = work / pair["out"]
    if not out.exists():
        routet2i = Path(sys.executable).parent / "routet2i"
        subprocess.run([str(routet2i), *import_command(pair, data_dir)[1:]], cwd=work, check=True)
    return out


def legacy_epoch_seconds(examples, states, epochs: int) -> dict[str, Any]:
    """Seconds per epoch of one unscaled RouteT2I head on the first fold's training prompts."""
    from router_model.lab.baselines import torch_threads
    from router_model.lab.data import kfold_splits
    from router_model.lab.train import train_router
    from router_model.model import RouterConfig

    train_idx, _ = kfold_splits(examples, k=5, seed=0)[0]
    train = [examples[i] for i in train_idx]
    config = RouterConfig(metrics=list(train[0].metrics), members=1)
    with torch_threads(1):
        router = train_router(train, config=config, token_states=states.subset(train_idx), epochs=epochs,
                              patience=10**6, scale=False, progress=False, log=None)  # fmt: skip
    summary = router.training_summary or {}
    return {"epochs": summary["epochs_run"], "seconds_per_epoch": summary["seconds"] / summary["epochs_run"]}


def run_pair(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from router_model.lab.data import read_examples
    from router_model.lab.evaluate import default_methods, encode_examples, evaluate
    from router_model.lab.train import train_router  # noqa: F401  (import cost outside the timings)
    from router_model.model import RouterConfig

    pair = PAIRS[name]
    examples = read_examples(ensure_dataset(pair, args.data_dir.resolve(), args.work))[: args.limit]
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        encode_examples(examples, cache_dir=cache, log=lambda *_: None)
        encode_s = time.perf_counter() - started
        started = time.perf_counter()
        states = encode_examples(examples, cache_dir=cache, log=lambda *_: None)
        read_s = time.perf_counter() - started
    started = time.perf_counter()
    methods = args.methods or default_methods()
    result = evaluate(examples, methods=methods, folds=5, seed=0, states=states, bootstrap=args.bootstrap, log=None)
    evaluate_s = time.perf_counter() - started
    legacy = legacy_epoch_seconds(examples, states, args.legacy_epochs) if args.legacy_epochs > 0 else None
    return {
        "name": name,
        "pair": pair,
        "n": len(examples),
        "encode_s": encode_s,
        "read_s": read_s,
        "evaluate_s": evaluate_s,
        "result": result,
        "legacy": legacy,
        "members": RouterConfig.members,
        "patience": 20,
    }


def pair_section(run: dict[str, Any]) -> str:
    result, pair = run["result"], run["pair"]
    seconds: dict[str, list[float]] = result["seconds_per_fold"]
    folds = len(next(iter(seconds.values())))
    head = ["method", *(f"fold {i + 1} (s)" for i in range(folds)), "total (s)", "ΔP(50%)", "AUC"]
    rows = [
        [m, *(f"{s:.1f}" for s in per_fold), f"{sum(per_fold):.1f}",
         f"{result['methods'][m]['delta_p']['0.5']:.2f}", f"{result['methods'][m]['auc']:.2f}"]
        for m, per_fold in seconds.items()
    ]  # fmt: skip
    methods_s = sum(sum(v) for v in seconds.values())
    in_all = (run["encode_s"] + run["evaluate_s"]) / 60
    lines = [
        f"### {pair['title']}",
        "",
        f"`{' '.join(import_command(pair, Path('../shared/data')))}`: {run['n']} prompts, "
        f"metrics {', '.join(result['dims'])}.",
        "",
        f"- Encoding every distinct prompt once (cold cache): **{run['encode_s']:.1f} s**; reading the cached "
        f"token states back (a re-run): {run['read_s']:.1f} s.",
        f"- `evaluate` (5 folds, {len(seconds)} methods, bootstrap included): **{run['evaluate_s']:.1f} s** "
        f"({methods_s:.1f} s fitting and scoring); with the cold encoding **{in_all:.1f} min** in all.",
    ]
    legacy = run["legacy"]
    if legacy is not None:
        floor = (run["patience"] + 1) * run["members"] * legacy["seconds_per_epoch"]
        now = float(np.mean(seconds.get("routet2i", [float("nan")])))
        lines.append(
            f"- Before (the unscaled loop, `scale=False`, fold 1): {legacy['seconds_per_epoch']:.1f} s per epoch per "
            f"member (mean of {legacy['epochs']} epochs); a fold needs at least (patience {run['patience']} + 1) "
            f"epochs × {run['members']} members = **{floor:.0f} s** that way, against {now:.1f} s per fold now."
        )
    return "\n".join([*lines, "", table(head, rows, align="l" + "r" * (len(head) - 1))])


def report(runs: Sequence[dict[str, Any]], note: str) -> str:
    from router_model.lab import schedule

    parts = [
        "## Training at scale",
        "",
        note,
        "",
        "Wall time of every default method of `routet2i evaluate --data` per fold (fit on the training prompts and "
        "score the test prompts), torch on one thread as `evaluate` runs it. RouteT2I's training schedule scales "
        f"from {schedule.SCALE_FROM:,} training prompts on (`router_model/lab/schedule.py`): validation every "
        f"~{schedule.CHECK_ROWS:,} prompts, patience ~{schedule.PATIENCE_ROWS:,} prompts, at most "
        f"~{schedule.MAX_ROWS:,} prompts seen, batches ×{schedule.BATCH_SCALE} at a ×{schedule.BATCH_SCALE} "
        f"learning rate, forward in length-sorted pieces of {schedule.PIECE}; below, the loop is unchanged. The "
        "machine is shared: its load average is in the line above, and wall times grow with it.",
    ]
    for run in runs:
        parts += ["", pair_section(run)]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=["cems", "genai"])
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--legacy-epochs", type=int, default=2, help="epochs of the unscaled head timed (0: skip)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--methods", nargs="+", help="only these methods (default: every default method)")
    parser.add_argument("--limit", type=int, help="only the first N prompts of each pair (a smoke run)")
    parser.add_argument("--work", type=Path, default=ROOT, help="where the imported datasets go (under runs/data/)")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    note = run_note()
    runs = [run_pair(name, args) for name in args.pairs]
    publish("train-scaling", report(runs, note), args)


if __name__ == "__main__":
    main()

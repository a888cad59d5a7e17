"""Budget tracking on real, shifting prompt traffic scored by the shipped router.

The stream is COCO captions → PartiPrompts → DiffusionDB prompts, with ρ changed mid-stream, and the
GenAI-Bench prompts that carry human ratings of SD 2.1 (edge) and DALL·E 3 (cloud) mixed in at even
spacing. Every prompt is scored by the real router (`RouteT2IRouter.from_pretrained`), then routed
two ways: by the live controller (`gateway.budget.BudgetController` on an `InMemoryBudgetStore`, one
request per 50 ms) and by a fixed α calibrated offline (`calibrate_alpha`) on COCO captions that are
not in the stream. Reported: max |realised cloud share − ρ| over every 1,000-request window (after a
200-request warm-up, windows straddling the ρ change left out), the share per 1,000-request block,
and the quality kept on the labelled prompts, ΔP = mean over metrics of
(Q_route − Q_edge)/(Q_cloud − Q_edge) × 100 of the routing each method realised on them.

    python -m bench.budget_tracking                  # writes its section of docs/BENCHMARKS.md
    python -m bench.budget_tracking --coco 1000 --parti 500 --diffusiondb 1000 --no-markdown   # quick look
    python -m bench.budget_tracking --arms           # the three-arm cost budget (bench/arm_stream.py)
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from bench.budget_replay import DATA_DIR, load_segments, replay_live, rho_per_request, window_report
from bench.markdown import add_output_arguments, publish, run_note
from bench.router_latency import CHECKPOINT, load_router, score_all
from router_model.lab.calibrate import calibrate_alpha
from router_model.lab.data import RoutingExample, import_genai_bench, read_prompts
from router_model.lab.markdown import table

GENAI_BENCH = DATA_DIR / "genai_bench_ratings.json"
EDGE, CLOUD = "SDXL_2_1", "DALLE_3"  # GenAI-Bench's "SDXL_2_1" is Stable Diffusion 2.1
WINDOW = 1000


def mix_in(stream: list[str], labelled: Sequence[str], seed: int = 0) -> tuple[list[str], np.ndarray]:
    """`labelled` inserted at evenly spaced positions (shuffled order); returns the stream and their positions."""
    order = np.random.default_rng(seed).permutation(len(labelled))
    total = len(stream) + len(labelled)
    positions = np.linspace(0, total - 1, len(labelled)).round().astype(int)
    merged: list[str] = []
    it = iter(stream)
    slots = set(positions.tolist())
    k = 0
    for i in range(total):
        if i in slots:
            merged.append(labelled[order[k]])
            k += 1
        else:
            merged.append(next(it))
    return merged, positions[np.argsort(order)]  # positions[j] = where labelled[j] went


def delta_p(cloud: np.ndarray, examples: Sequence[RoutingExample]) -> float:
    """ΔP of a realised routing: mean over metrics of (Q_route − Q_edge)/(Q_cloud − Q_edge) × 100."""
    q_edge = np.array([e.q_edge for e in examples], dtype=np.float64)
    q_cloud = np.array([e.q_cloud for e in examples], dtype=np.float64)
    q_route = np.where(cloud[:, None], q_cloud, q_edge).mean(axis=0)
    gain = q_cloud.mean(axis=0) - q_edge.mean(axis=0)
    return float(np.mean((q_route - q_edge.mean(axis=0)) / gain) * 100.0)


def top_share_delta_p(scores: np.ndarray, share: float, examples: Sequence[RoutingExample]) -> float:
    """ΔP when the same number of labelled prompts goes to the cloud, chosen by lowest PRŜ (offline ideal)."""
    cloud = np.zeros(len(scores), dtype=bool)
    cloud[np.argsort(scores, kind="stable")[: int(round(share * len(scores)))]] = True
    return delta_p(cloud, examples)


def shown(path: Path) -> str:
    """`path` relative to the repository when it lies inside it (for the report)."""
    root = Path(__file__).resolve().parents[1]
    path = Path(path).resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    sizes = {"coco": args.coco, "parti": args.parti, "diffusiondb": args.diffusiondb}
    segments = load_segments(sizes)
    calibration = read_prompts(DATA_DIR / "coco2014_val_captions_5k.tsv")[args.coco :][: args.calibration]
    examples = import_genai_bench(GENAI_BENCH, EDGE, CLOUD)
    stream = [p for _, prompts in segments for p in prompts]
    sources = [name for name, prompts in segments for _ in prompts]
    merged, labelled_at = mix_in(stream, [e.prompt for e in examples])

    router = load_router(args.checkpoint)
    scores = score_all(router, merged)
    calibration_scores = score_all(router, calibration)
    change = args.change_at if args.change_at is not None else len(merged) // 2
    schedule = [(0, args.rho), (change, args.rho_after)]
    rho = rho_per_request(len(merged), schedule)
    alphas = {r: calibrate_alpha(calibration_scores, r) for r in (args.rho, args.rho_after)}
    fixed = scores < np.array([alphas[r] for r in rho])
    live = replay_live(scores, schedule)

    source_of = np.empty(len(merged), dtype=object)
    source_of[:] = "genai-bench"
    rest = np.setdiff1d(np.arange(len(merged)), labelled_at)
    source_of[rest] = sources
    return {
        "n": len(merged),
        "segments": [(name, len(p)) for name, p in segments],
        "n_labelled": len(examples),
        "n_calibration": len(calibration),
        "change": change,
        "schedule": schedule,
        "alphas": alphas,
        "scores": scores,
        "sources": source_of,
        "rho": rho,
        "labelled_at": labelled_at,
        "examples": examples,
        "methods": {"live controller": live, "fixed offline α": fixed},
    }


def report(result: dict, args: argparse.Namespace) -> str:
    scores, rho, change = result["scores"], result["rho"], result["change"]
    examples, at = result["examples"], result["labelled_at"]
    labelled_scores = scores[at]
    rows = []
    for name, cloud in result["methods"].items():
        w = window_report(cloud, rho, [change], window=WINDOW)
        share = float(cloud[at].mean())
        rows.append(
            [name, w["windows"], f"{w['max_abs_dev']:.4f}", f"{w['max_over']:+.4f}", f"{w['min_fraction']:.3f}",
             f"{w['max_fraction']:.3f}", f"{share:.3f}", f"{delta_p(cloud[at], examples):.1f}",
             f"{top_share_delta_p(labelled_scores, share, examples):.1f}", f"{100 * share:.1f}"]
        )  # fmt: skip
    blocks = []
    for start in range(0, len(scores) - WINDOW + 1, WINDOW):
        part = slice(start, start + WINDOW)
        names, counts = np.unique(result["sources"][part], return_counts=True)
        main_source = names[np.argmax(counts)]
        blocks.append(
            [f"{start}–{start + WINDOW - 1}", main_source, f"{np.mean(scores[part]):.3f}", f"{rho[part].mean():.2f}"]
            + [f"{cloud[part].mean():.3f}" for cloud in result["methods"].values()]
        )
    by_source = [
        [name, int(np.sum(result["sources"] == name)), f"{np.mean(scores[result['sources'] == name]):.3f}",
         f"{np.mean(scores[result['sources'] == name] < 0.5):.3f}"]
        for name in [*(n for n, _ in result["segments"]), "genai-bench"]
    ]  # fmt: skip
    (r0, r1), alphas = (args.rho, args.rho_after), result["alphas"]
    lines = [
        "## Budget tracking",
        "",
        run_note(),
        "",
        f"{result['n']} requests: "
        + " → ".join(f"{name} {n}" for name, n in result["segments"])
        + f", with the {result['n_labelled']} GenAI-Bench prompts (human ratings, {EDGE} = SD 2.1 edge, {CLOUD} "
        f"cloud) mixed in at even spacing; ρ {r0} → {r1} at request {change}. Scores: the shipped router "
        f"(`{shown(args.checkpoint)}`). "
        f"Fixed α calibrated on {result['n_calibration']} COCO captions not in the stream: "
        + ", ".join(f"ρ {r} → α {a:.4f}" for r, a in alphas.items())
        + ". Live: `BudgetController` defaults on an `InMemoryBudgetStore`, one request per 50 ms.",
        "",
        table(["source", "prompts", "mean PRŜ", "share PRŜ < ½"], by_source),
        "",
        table(
            [
                "method",
                f"windows of {WINDOW}",
                "max abs(realised − ρ)",
                "max over ρ",
                "min share",
                "max share",
                "cloud share (labelled)",
                "ΔP labelled",
                "ΔP ideal at that share",
                "ΔP random at that share",
            ],
            rows,
        ),  # fmt: skip
        "",
        "Cloud share per block of 1,000 requests:",
        "",
        table(["requests", "mostly", "mean PRŜ", "ρ", *result["methods"]], blocks, align="llrrrr"),
        "",
        "The labelled prompts are the GenAI-Bench prompts the shipped checkpoint was trained and validated on, so "
        "their ΔP is in-sample: it shows what each budget method keeps of the router's ranking, not how good the "
        "router is (see the k-fold evaluation for that). 'Ideal at that share' sends the same number of labelled "
        "prompts to the cloud by lowest PRŜ among them.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coco", type=int, default=3000)
    parser.add_argument("--parti", type=int, default=1632)
    parser.add_argument("--diffusiondb", type=int, default=3000)
    parser.add_argument("--calibration", type=int, default=2000, help="COCO captions after the stream's, for α")
    parser.add_argument("--rho", type=float, default=0.3)
    parser.add_argument("--rho-after", type=float, default=0.5)
    parser.add_argument("--change-at", type=int, help="request index of the ρ change (default: mid-stream)")
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--arms", action="store_true", help="the three-arm cost-budget stream instead (CEMS)")
    parser.add_argument("--predictions", type=Path, help="--arms: folder caching the out-of-fold predictions")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    if args.arms:
        from bench import arm_stream

        torch.set_num_threads(args.threads)
        text = "## Budget tracking: three arms\n\n" + run_note() + "\n\n"
        text += arm_stream.report([arm_stream.run(s, cache_dir=args.predictions) for s in arm_stream.STREAMS])
        publish("budget-tracking-arms", text, args)
        return
    text = report(run(args), args)
    publish("budget-tracking", text, args)


if __name__ == "__main__":
    main()

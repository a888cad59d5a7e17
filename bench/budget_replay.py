"""Replay real prompt traffic through the live budget controller and a fixed offline α.

Traffic: COCO captions → PartiPrompts → DiffusionDB, with a ρ change mid-stream. The real router is
not part of this replay: each prompt gets a deterministic, prompt-dependent stand-in score, the
MiniLM sentence embedding projected on a fixed random direction and squashed by a sigmoid. Like a
router's PRŜ, its distribution moves between the three sources, which is what a fixed α cannot follow.

    python bench/budget_replay.py [--coco 3000 --parti 1632 --diffusiondb 3000 --rho 0.3 --rho-after 0.5]
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gateway.budget import BudgetController, InMemoryBudgetStore
from router_model.encoder import DEFAULT_ENCODER, TextEncoder
from router_model.lab.calibrate import calibrate_alpha
from router_model.lab.data import read_prompts

DATA_DIR = Path(os.environ.get("ROUTET2I_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
SOURCES = (
    ("coco", "coco2014_val_captions_5k.tsv"),
    ("parti", "parti_prompts.tsv"),
    ("diffusiondb", "diffusiondb_refl_prompts.json"),
)
# Seed 3 makes the compositional sources (Parti, DiffusionDB) score lower, i.e. more cloud-favoured,
# the direction of drift the paper reports (more nouns → the large model wins more often).
DIRECTION_SEED = 3
# Centre the stand-in PRŜ below ½ (the cloud model usually wins), so the α ≤ ½ cap rarely binds at ρ ≤ ½.
SCORE_SHIFT = 0.5


def load_segments(sizes: dict[str, int], data_dir: Path = DATA_DIR) -> list[tuple[str, list[str]]]:
    """The first `sizes[name]` prompts of each source, in replay order."""
    return [(name, read_prompts(data_dir / file)[: sizes[name]]) for name, file in SOURCES if sizes.get(name)]


def project_prompts(prompts: Sequence[str], encoder: TextEncoder, direction: np.ndarray, batch_size: int = 128):
    """Mean-pooled sentence embeddings projected on `direction`; batches of similar length keep padding low."""
    order = np.argsort([len(p) for p in prompts], kind="stable")
    out = np.empty(len(prompts), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        pooled = encoder.encode([prompts[i] for i in index], batch_size=batch_size).mean_pooled().numpy()
        out[index] = pooled.astype(np.float64) @ direction
    return out


def stand_in_scores(
    segments: Sequence[tuple[str, Sequence[str]]],
    *,
    seed: int = DIRECTION_SEED,
    shift: float = SCORE_SHIFT,
    encoder_name: str = DEFAULT_ENCODER,
    max_length: int = 32,
) -> dict[str, np.ndarray]:
    """σ(z − shift), z the projection standardised on the first segment (the calibration traffic)."""
    encoder = TextEncoder(encoder_name, device="cpu", max_length=max_length)
    direction = np.random.default_rng(seed).standard_normal(encoder.hidden_size)
    direction /= np.linalg.norm(direction)
    projected = {name: project_prompts(prompts, encoder, direction) for name, prompts in segments}
    ref = projected[segments[0][0]]
    mean, std = ref.mean(), ref.std() + 1e-12
    return {name: 1.0 / (1.0 + np.exp(-((p - mean) / std - shift))) for name, p in projected.items()}


def rho_per_request(n: int, schedule: Sequence[tuple[int, float]]) -> np.ndarray:
    """ρ in force at each request; `schedule` is [(first request index, ρ), ...] starting at 0."""
    rho = np.empty(n)
    for (start, value), (end, _) in zip(schedule, [*schedule[1:], (n, 0.0)], strict=True):
        rho[start:end] = value
    return rho


def replay_live(scores: np.ndarray, schedule: Sequence[tuple[int, float]], **controller_kwargs) -> np.ndarray:
    """Cloud decisions of a `BudgetController` over the stream (one request per 50 ms, no cost cap)."""
    clock = [0.0]
    store = InMemoryBudgetStore(schedule[0][1])
    controller = BudgetController(store, clock=lambda: clock[0], **controller_kwargs)
    changes = dict(schedule)
    cloud = np.zeros(len(scores), dtype=bool)
    for i, prs in enumerate(scores):
        if i in changes:
            controller.set_rho(changes[i])
        clock[0] += 0.05
        cloud[i] = controller.decide(float(prs)).cloud
    return cloud


def window_report(
    cloud: np.ndarray,
    rho: np.ndarray,
    change_points: Sequence[int] = (),
    *,
    window: int = 1000,
    warmup: int = 200,
) -> dict[str, float | int]:
    """Realised cloud fraction of every window of `window` requests that starts after `warmup` and does
    not straddle a ρ change, against the ρ in force: max |realised − ρ| and max (realised − ρ)."""
    sums = np.concatenate([[0], np.cumsum(cloud)])
    starts = np.array(
        [s for s in range(warmup, len(cloud) - window + 1) if not any(s < c < s + window for c in change_points)]
    )
    if len(starts) == 0:
        raise ValueError(f"no window of {window} requests after a warm-up of {warmup} in {len(cloud)} requests")
    fraction = (sums[starts + window] - sums[starts]) / window
    deviation = fraction - rho[starts]
    return {
        "windows": int(len(starts)),
        "max_abs_dev": float(np.abs(deviation).max()),
        "max_over": float(deviation.max()),
        "min_fraction": float(fraction.min()),
        "max_fraction": float(fraction.max()),
    }


def selection_ratio(scores: np.ndarray, cloud: np.ndarray, block: int = 1000) -> float:
    """How well the cloud calls pick the lowest scores, whatever their number: mean within-block
    percentile of the cloud-routed requests over the ideal f/2, f the block's cloud share (1 = the
    lowest-scored f of each block of `block` requests exactly; about 1/f when picked at random)."""
    ratios = []
    for start in range(0, len(scores) - block + 1, block):
        chosen = cloud[start : start + block]
        if chosen.any():
            percentile = (np.argsort(np.argsort(scores[start : start + block], kind="stable")) + 0.5) / block
            ratios.append(percentile[chosen].mean() / (chosen.mean() / 2))
    return float(np.mean(ratios)) if ratios else math.nan


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coco", type=int, default=3000)
    parser.add_argument("--parti", type=int, default=1632)
    parser.add_argument("--diffusiondb", type=int, default=3000)
    parser.add_argument("--rho", type=float, default=0.3)
    parser.add_argument("--rho-after", type=float, default=0.5)
    parser.add_argument("--change-at", type=int, help="request index of the ρ change (default: mid-stream)")
    args = parser.parse_args(argv)

    segments = load_segments({"coco": args.coco, "parti": args.parti, "diffusiondb": args.diffusiondb})
    by_source = stand_in_scores(segments)
    scores = np.concatenate([by_source[name] for name, _ in segments])
    change = args.change_at if args.change_at is not None else len(scores) // 2
    schedule = [(0, args.rho), (change, args.rho_after)]
    rho = rho_per_request(len(scores), schedule)
    alphas = {r: calibrate_alpha(by_source["coco"], r) for r in (args.rho, args.rho_after)}
    fixed = scores < np.array([alphas[r] for r in rho])
    live = replay_live(scores, schedule)

    print(f"{len(scores)} requests: " + ", ".join(f"{name} {len(p)}" for name, p in segments))
    print(f"ρ {args.rho} → {args.rho_after} at request {change}; fixed α calibrated on COCO: {alphas}")
    for name, s in by_source.items():
        print(f"  stand-in PRŜ {name:12s} mean {s.mean():.3f}  share < ½ {np.mean(s < 0.5):.3f}")
    print(
        f"{'method':8s} {'windows':>8s} {'max|dev|':>9s} {'max over':>9s} {'min frac':>9s} {'max frac':>9s} selection"
    )
    for label, cloud in (("live", live), ("fixed", fixed)):
        r = window_report(cloud, rho, [change])
        print(
            f"{label:8s} {r['windows']:8d} {r['max_abs_dev']:9.4f} {r['max_over']:+9.4f} "
            f"{r['min_fraction']:9.3f} {r['max_fraction']:9.3f} {selection_ratio(scores, cloud):9.2f}"
        )


if __name__ == "__main__":
    main()

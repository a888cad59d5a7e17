"""Three-arm cost budgets held live on real rated traffic (`python -m bench.budget_tracking --arms`).

Two streams, each routed among three arms by the live rule (`ArmPacer`, the gateway's defaults, one request per
50 ms) with the budget changed mid-stream:

- GenAI-Bench: its 416 prompts rated by people on SDXL-Turbo, DeepFloyd IF-XL and DALL·E 3 (relative prices of
  docs/FRONTIER.md), replayed in 24 freshly shuffled passes (9,984 requests); all three arms get traffic.
- CEMS: its 9,923 prompts in the file's order (DrawBench → PartiPrompts → DiffusionDB: the mix drifts), rated
  (CLIP × 100 and NIMA, averaged) on SD-Turbo, aMUSEd and SDXL-Turbo; cost = each arm's mean measured seconds.

The quality predictions are real out-of-fold predictions, not the ratings: the frontier's predictor
(`router_model.lab.frontier.out_of_fold` with `predictor="irt"`: `train_multi`'s IRT model on cheap prompt
features, 5 folds by prompt, so no prompt is predicted by a model that saw it). Reported: the mean cost per
request in every 1,000-request window after warm-up against the budget in force, and the rated quality the
routing realised against a random mix of the same arms at the same cost.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.budget_replay import DATA_DIR
from gateway.budget import pacing
from gateway.budget.arm_pacer import ArmPacer
from router_model.lab.markdown import table

STREAMS = {
    "genai": {
        "path": DATA_DIR / "genai_bench_ratings.json", "arms": ("sdxl-turbo", "deepfloyd-if-xl", "dall-e-3"),
        "costs": {"sdxl-turbo": 0.167, "deepfloyd-if-xl": 10.0, "dall-e-3": 40.0}, "passes": 24,
        "what": "GenAI-Bench's 416 prompts (human alignment 1–5) in 24 shuffled passes; relative prices of "
        "docs/FRONTIER.md (SDXL-Turbo GPU-seconds to DALL·E 3's $0.040)",
    },
    "cems": {
        "path": DATA_DIR / "ratings" / "cems_10k.csv.gz", "arms": ("sd-turbo", "cems:amused", "sdxl-turbo"),
        "costs": None, "passes": 1,
        "what": "CEMS's 9,923 prompts in file order (DrawBench → PartiPrompts → DiffusionDB; mean of CLIP×100 and "
        "NIMA); cost = each arm's mean measured seconds per image",
    },
}  # fmt: skip
WINDOW = 1000
WARM_UP = 200


def predictions(stream: str, folds: int = 5, cache: Path | None = None) -> dict:
    """The stream's prompts with, per arm, predicted and rated quality and cost (cached in `cache`)."""
    spec = STREAMS[stream]
    arms = list(spec["arms"])
    if cache is not None and cache.exists():
        saved = np.load(cache, allow_pickle=False)
        if list(saved["arms"]) == arms:
            return {k: saved[k] for k in saved.files} | {"arms": arms, "seconds": float(saved["seconds"])}
    from router_model.lab import frontier as fr

    started = time.perf_counter()
    name, items = fr.load_rated(spec["path"])
    costs = [f"{m}={c}" for m, c in spec["costs"].items()] if spec["costs"] else None
    known = sorted({m for it in items for m in it.scores})
    test = fr.test_matrix(name, items, fr.parse_costs(costs, known, name) if costs else None, None)
    inputs, _ = fr.build_inputs([it.prompt for it in items], None)
    pred_q, _ = fr.out_of_fold(test, items, {}, inputs, folds, 0, predictor="irt")
    cols = [test.models.index(a) for a in arms]
    out = {
        "arms": np.array(arms), "predicted": pred_q[:, cols], "quality": test.quality[:, cols],
        "cost": test.cost[:, cols], "seconds": time.perf_counter() - started,
    }  # fmt: skip
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **out)
    return out | {"arms": arms}


def replay(predicted: np.ndarray, costs: Sequence[float], schedule: Sequence[tuple[int, float]]) -> dict:
    """Route every request with a live `ArmPacer` (gateway defaults, one request per 50 ms), the budget changed
    at the schedule's indices; the chosen arm, its cost and the budget in force per request."""
    clock = {"t": 1_000.0}

    def tick() -> float:
        clock["t"] += 0.05
        return clock["t"]

    pacer = ArmPacer(costs, budget=schedule[0][1], clock=tick)
    changes = dict(schedule)
    arm, cost, budget, lam = (np.zeros(len(predicted), int), np.zeros(len(predicted)), np.zeros(len(predicted)),
                              np.zeros(len(predicted)))  # fmt: skip
    started = time.perf_counter()
    for i, q in enumerate(predicted):
        if i in changes:
            pacer.set_budget(changes[i])
        choice = pacer.decide(q)
        arm[i], cost[i], budget[i], lam[i] = choice.arm, choice.cost, pacer.budget, choice.lam
    per_request = (time.perf_counter() - started) / len(predicted)
    return {"arm": arm, "cost": cost, "budget": budget, "lam": lam, "decide_s": per_request}


def windows(cost: np.ndarray, budget: np.ndarray, changes: Sequence[int], window: int = WINDOW) -> dict:
    """Every `window`-request window starting after warm-up, leaving out those straddling a budget change:
    the mean cost per request relative to the budget in force (the budget at the window's last request)."""
    sums = np.concatenate([[0.0], np.cumsum(cost)])
    starts = [s for s in range(WARM_UP, len(cost) - window + 1) if not any(s < c < s + window for c in changes)]
    rel = np.array([(sums[s + window] - sums[s]) / window / budget[s + window - 1] - 1 for s in starts])
    return {"windows": len(starts), "max_abs": float(np.abs(rel).max()), "max_over": float(rel.max()),
            "min": float(rel.min())}  # fmt: skip


def random_mix_quality(quality: np.ndarray, arm: np.ndarray, seed: int = 0) -> float:
    """Mean rated quality of the same arm shares given to random prompts (what predictions add is the gap)."""
    return float(quality[np.arange(len(arm)), np.random.default_rng(seed).permutation(arm)].mean())


def run(stream: str, rho_before: float = 0.3, rho_after: float = 0.6, cache_dir: Path | None = None) -> dict:
    """Predict (or load), build the stream, route it live, measure the windows."""
    spec = STREAMS[stream]
    data = predictions(stream, cache=cache_dir / f"arm_stream_{stream}.npz" if cache_dir else None)
    rng = np.random.default_rng(0)
    order = np.concatenate([rng.permutation(len(data["predicted"])) for _ in range(spec["passes"])])
    if spec["passes"] == 1:
        order = np.arange(len(data["predicted"]))
    costs = [float(c) for c in data["cost"].mean(0)]
    change = len(order) // 2
    schedule = [(0, pacing.rho_to_cost(rho_before, costs)), (change, pacing.rho_to_cost(rho_after, costs))]
    live = replay(data["predicted"][order], costs, schedule)
    return {"stream": stream, "data": data, "order": order, "costs": costs, "schedule": schedule, "change": change,
            "live": live, "windows": windows(live["cost"], live["budget"], [change]),
            "rhos": (rho_before, rho_after)}  # fmt: skip


def summary_row(result: dict) -> list[str]:
    w, live = result["windows"], result["live"]
    quality = result["data"]["quality"][result["order"]]
    n = len(live["arm"])
    realised = float(quality[np.arange(n), live["arm"]].mean())
    shares = np.bincount(live["arm"], minlength=3) / n
    return [result["stream"], str(n), " / ".join(f"{s:.2f}" for s in shares), str(w["windows"]),
            f"{100 * w['max_abs']:.2f}%", f"{100 * w['max_over']:+.2f}%", f"{100 * w['min']:+.2f}%",
            f"{realised:.3f}", f"{random_mix_quality(quality, live['arm']):.3f}",
            f"{1e3 * live['decide_s']:.2f}"]  # fmt: skip


def blocks(result: dict) -> str:
    live, arms = result["live"], result["data"]["arms"]
    rows = []
    for start in range(0, len(live["arm"]) - WINDOW + 1, WINDOW):
        part = slice(start, start + WINDOW)
        shares = np.bincount(live["arm"][part], minlength=len(arms)) / WINDOW
        mean, budget = live["cost"][part].mean(), live["budget"][part.stop - 1]
        rows.append([f"{start}–{start + WINDOW - 1}", f"{budget:.4g}", f"{mean:.4g}",
                     f"{100 * (mean / budget - 1):+.2f}%", *(f"{s:.3f}" for s in shares),
                     f"{live['lam'][part].mean():.3g}"])  # fmt: skip
    return table(["requests", "budget", "mean cost", "vs budget", *(f"share {a}" for a in arms), "mean λ"], rows)


def report(results: Sequence[dict]) -> str:
    lines = [
        "Streams (quality predictions: out-of-fold, 5 folds by prompt, from the frontier's IRT predictor on cheap "
        "prompt features; not the ratings):",
        "",
    ]
    for r in results:
        spec, (b0, b1) = STREAMS[r["stream"]], [b for _, b in r["schedule"]]
        arms = ", ".join(f"`{a}` ({c:.4g})" for a, c in zip(r["data"]["arms"], r["costs"], strict=True))
        lines.append(
            f"- **{r['stream']}**: {spec['what']}. Arms (cost per image): {arms}. Budget {b0:.4g} → {b1:.4g} per "
            f"request (ρ {r['rhos'][0]} → {r['rhos'][1]} between the cheapest and the dearest arm) at request "
            f"{r['change']}; predictions fitted in {r['data']['seconds']:.0f} s."
        )
    lines += [
        "",
        table(
            [
                "stream",
                "requests",
                "arm shares",
                "windows of 1,000",
                "max abs(mean cost / budget − 1)",
                "max over budget",
                "most under budget",
                "rated quality routed",
                "same shares at random",
                "ms per decision",
            ],
            [summary_row(r) for r in results],
        ),  # fmt: skip
        "",
        f"Every window of {WINDOW:,} consecutive requests starting after a {WARM_UP}-request warm-up, except those "
        "straddling the budget change (their allowance moves from the old budget to the new over 1,000 requests). "
        "Target: within 2% of the budget, never above it by more than 2%. Live: `ArmPacer` with the gateway's "
        "defaults (decision and score windows of 1,000), one request per 50 ms. 'Same shares at random' gives "
        "each arm the share the rule gave it, on random prompts: the gap is what the predictions add at that cost. "
        "On CEMS, aMUSEd is predicted worse than SD-Turbo on nearly every prompt and costs more, so the rule gives "
        "it (almost) no traffic; on GenAI-Bench all three arms serve.",
    ]
    for r in results:
        lines += ["", f"Per block of 1,000 requests, {r['stream']}:", "", blocks(r)]
    return "\n".join(lines)

"""The frontier's plot and docs/FRONTIER.md: the four public sets, the prices chosen, and the issue's margins.

`routet2i frontier --page docs/FRONTIER.md` runs `run_frontier` on each entry of `RUNS` (the prices
are the page's to state: see `PRICES`) and writes the page and one PNG per set beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from router_model.lab.frontier_curves import Curve
from router_model.lab.markdown import number, table

# Relative prices in milli-dollars per image. Closed models: public per-image API prices. Open models:
# GPU-seconds per image on an A100 (our estimate for the model's default steps and resolution) at
# $2.00 per GPU-hour = 0.556 m$ per GPU-second.
GPU_SECOND = 2.0 / 3600 * 1000  # m$
PRICES: dict[str, dict[str, tuple[float, str]]] = {
    "genai": {
        "SDXL_Turbo": (0.3 * GPU_SECOND, "1 step 512², ~0.3 GPU-s"),
        "SDXL_2_1": (3 * GPU_SECOND, "SD 2.1, 50 steps 768², ~3 GPU-s"),
        "SDXL_Base": (7 * GPU_SECOND, "SDXL, 50 steps 1024², ~7 GPU-s"),
        "DeepFloyd_I_XL_v1": (18 * GPU_SECOND, "IF-XL three stages, ~18 GPU-s"),
        "Midjourney_6": (33.0, "Standard plan $30 / ~900 fast images"),
        "DALLE_3": (40.0, "OpenAI $0.040 standard 1024²"),
    },
    "agiqa3k": {
        "AttnGAN_normal": (0.05 * GPU_SECOND, "GAN, one forward pass"),
        "sd1.5_lowstep": (0.6 * GPU_SECOND, "SD 1.5, few steps, ~0.6 GPU-s"),
        "sd1.5_normal": (2 * GPU_SECOND, "SD 1.5, 50 steps 512², ~2 GPU-s"),
        "sd1.5_highcorr": (2 * GPU_SECOND, "SD 1.5, high guidance: same compute"),
        "sd1.5_lowcorr": (2 * GPU_SECOND, "SD 1.5, low guidance: same compute"),
        "glide_normal": (6 * GPU_SECOND, "GLIDE 64² + upsampler, ~6 GPU-s"),
        "xl2.2_normal": (7 * GPU_SECOND, "SDXL, 50 steps 1024², ~7 GPU-s"),
        "DALLE2_normal": (20.0, "OpenAI $0.020 1024²"),
        "midjourney_lowstep": (17.0, "Midjourney at half quality, ~half the GPU minutes"),
        "midjourney_normal": (33.0, "Standard plan $30 / ~900 fast images"),
    },
    "aigciqa2023": {
        "Lafite": (0.1 * GPU_SECOND, "GAN-based, one forward pass"),
        "stable-diffusion": (2 * GPU_SECOND, "SD 1.x, 50 steps 512², ~2 GPU-s"),
        "Controlnet": (2.5 * GPU_SECOND, "SD 1.x + ControlNet, ~2.5 GPU-s"),
        "Unidiffuser": (3 * GPU_SECOND, "UniDiffuser, 50 steps 512², ~3 GPU-s"),
        "Glide": (6 * GPU_SECOND, "GLIDE 64² + upsampler, ~6 GPU-s"),
        "DALLE": (20.0, "OpenAI DALL-E 2 $0.020 1024²"),
    },
}
RUNS = {
    "genai": ("genai_bench_ratings.json", "GenAI-Bench (human alignment 1–5)"),
    "agiqa3k": ("agiqa3k_mos.csv", "AGIQA-3K (mean of quality and alignment MOS)"),
    "aigciqa2023": ("ratings/aigciqa2023_levels.csv", "AIGCIQA2023 (mean of three 1–3 levels)"),
    "cems": ("ratings/cems_10k.csv.gz", "CEMS (mean of CLIP score ×100 and NIMA 1–10)"),
}
STYLE = {
    "random_mix": ("grey", "--", 1.2),
    "length_policy": ("tab:orange", "-", 1.5),
    "two_arm": ("tab:blue", "-", 1.5),
    "two_arm_envelope": ("tab:blue", "--", 1.0),
    "n_arm": ("black", "-", 2.4),
    "oracle": ("tab:green", ":", 1.5),
}


def plot_frontier(curves: dict[str, Curve], title: str, xlabel: str, path: str | Path) -> Path:
    """Every method's quality against cost; single models as labelled points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name, pts in curves.items():
        if name.startswith("single:"):
            ax.scatter(pts[:, 0], pts[:, 1], color="tab:red", zorder=3, s=18)
            ax.annotate(name[7:], (pts[0, 0], pts[0, 1]), fontsize=7, xytext=(3, -9), textcoords="offset points")
        else:
            color, style, width = STYLE.get(name, ("tab:purple", "-", 1.2))
            ax.plot(pts[:, 0], pts[:, 1], style, color=color, linewidth=width, label=name)
    costs = np.concatenate([p[:, 0] for p in curves.values()])
    if costs.min() > 0 and costs.max() / costs.min() > 30:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean quality (the set's own units)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ci(m: dict) -> str:
    return f"{number(m['estimate'], 3)} [{number(m['ci_low'], 3)}, {number(m['ci_high'], 3)}]"


def predictor_line(folds: list[dict]) -> str:
    """Which predictor each fold kept, with the inner hold-out errors and the ridge's tuned values."""
    parts = []
    for i, f in enumerate(folds):
        text = f"fold {i + 1}: {f['predictor']}"
        if "inner_mse_irt" in f:
            text += f" (inner error IRT {f['inner_mse_irt']:.4g}, ridge {f['inner_mse_ridge']:.4g})"
        if "alpha" in f:
            text += f", α {f['alpha']:g}, α_e {f['emb_alpha']:g}, γ {f['gamma']:g}"
        parts.append(text)
    return "Predictor per fold: " + ("; ".join(parts) if parts else "not recorded") + "."


def section(result: dict, title: str, png: str) -> str:
    models = result["models"]
    prices = PRICES.get(result["dataset"], {})
    why = {}
    from router_model.model_ids import canonical_id

    for raw, (_, note) in prices.items():
        why[canonical_id(raw, result["dataset"])] = note
    curves = {m: np.array([[p["cost"], p["quality"]] for p in v["points"]]) for m, v in result["methods"].items()}
    rows = [
        [m, number(result["costs"][m], 3), why.get(m, "measured"), number(curves[f"single:{m}"][0, 1], 3)]
        for m in sorted(models, key=lambda m: result["costs"][m])
    ]
    mg = result["margins"]
    margin_rows = [
        ["vs two_arm (mean over the cost grid)", _ci(mg["vs_two_arm_mean"])],
        ["vs two_arm (worst cost)", _ci(mg["vs_two_arm_min"])],
        ["vs two_arm_envelope, optimistic reference (mean)", _ci(mg["vs_two_arm_envelope_mean"])],
        ["vs two_arm_envelope, optimistic reference (worst cost)", _ci(mg["vs_two_arm_envelope_min"])],
        ["vs length_policy (mean)", _ci(mg["vs_length_policy_mean"])],
        ["vs length_policy (worst cost)", _ci(mg["vs_length_policy_min"])],
        ["vs the single models, worst one at its own cost", _ci(mg["vs_singles_min"])],
    ]
    from router_model.lab.frontier_curves import quality_at

    budget_rows = []
    for label, b in mg["budgets"].items():
        shown = ("n_arm", "two_arm", "two_arm_envelope", "length_policy", "oracle")
        q = {m: quality_at(curves[m], np.array([b]))[0] for m in shown}
        budget_rows.append(
            [f"{float(label):.0%}", number(b, 3), *(number(q[m], 3) for m in q),
             _ci(mg[f"vs_two_arm@{label}"]), _ci(mg[f"vs_length_policy@{label}"])]
        )  # fmt: skip
    budget_head = ["budget", "cost", "n_arm", "two_arm", "envelope", "length", "oracle", "n_arm − two_arm",
                   "n_arm − length"]  # fmt: skip
    unit = "m$ per image" if result["cost_unit"].startswith("given") else result["cost_unit"]
    return "\n".join(
        [
            f"## {title}",
            "",
            f"{result['prompts']} prompts rated on all {len(models)} models, {result['folds']}-fold by prompt; "
            f"quality = mean of {', '.join(result['dimensions'])}; cost in {unit}; cheapest `{result['cheapest']}`, "
            f"best `{result['best']}`; {result['seconds']:.0f} s.",
            "",
            predictor_line(result.get("predictor_folds", [])),
            "",
            f"![{result['dataset']} frontier]({png})",
            "",
            table(["model", "cost", "why this cost", "mean quality"], rows, "lrlr"),
            "",
            f"N-arm margins (quality units; estimate [95% bootstrap CI over {result['bootstrap']} resamples of the "
            "test prompts]):",
            "",
            table(["margin of n_arm", "value"], margin_rows),
            "",
            "At budgets a fraction of the way from the cheapest model's cost to the best model's:",
            "",
            table(budget_head, budget_rows),
            "",
        ]
    )


def at_every_cost(result: dict, other: str = "two_arm") -> bool:
    """Whether "N-arm ≥ `other` at every cost" is shown: the worst-cost margin's point estimate is ≥ 0, i.e.
    n_arm reads at least as high as `other` at every cost of the shared grid (up to rounding)."""
    return result["margins"][f"vs_{other}_min"]["estimate"] >= -1e-9


def summary(results: dict[str, dict]) -> str:
    """One row per set: the issue's target margins (mean and worst over matched costs vs the deployable two-arm
    router, mean vs the optimistic envelope, the length policy and the worst single model) with CIs, and a
    column with the verdict on "N-arm ≥ two-arm at every cost" (`at_every_cost`)."""
    rows = [
        [name, str(r["prompts"]), str(len(r["models"])), _ci(r["margins"]["vs_two_arm_mean"]),
         _ci(r["margins"]["vs_two_arm_min"]), "shown" if at_every_cost(r) else "not shown",
         _ci(r["margins"]["vs_two_arm_envelope_mean"]), _ci(r["margins"]["vs_length_policy_mean"]),
         _ci(r["margins"]["vs_singles_min"])]
        for name, r in results.items()
    ]  # fmt: skip
    head = ["set", "prompts", "models", "n_arm − two_arm (mean)", "n_arm − two_arm (worst cost)",
            "N-arm ≥ two-arm at every cost", "n_arm − envelope (mean)", "n_arm − length_policy",
            "n_arm − worst single"]  # fmt: skip
    return "\n".join(["## Summary: the issue's targets", "", table(head, rows), ""])


def verdict(results: dict[str, dict]) -> str:
    """The Reading's generated bullet: per set, whether "N-arm ≥ two-arm at every cost" is shown."""
    from router_model.lab.frontier_curves import budget_grid, quality_at

    parts = []
    for name, r in results.items():
        m = r["margins"]
        curves = {k: np.array([[p["cost"], p["quality"]] for p in v["points"]]) for k, v in r["methods"].items()}
        grid = budget_grid(curves["n_arm"], curves["two_arm"])  # the grid of `margins`
        worst = grid[np.nanargmin(quality_at(curves["n_arm"], grid) - quality_at(curves["two_arm"], grid))]
        parts.append(
            f"{name}: **{'shown' if at_every_cost(r) else 'not shown'}** (worst-cost margin "
            f"{_ci(m['vs_two_arm_min'])} at cost {number(worst, 3)}, mean {_ci(m['vs_two_arm_mean'])})"
        )
    return (
        "- **N-arm ≥ the deployable two-arm router at every cost** (*generated* from the results: shown where the "
        "point estimate of the worst-cost margin is ≥ 0, i.e. at every cost of the shared grid): "
        + "; ".join(parts)
        + "."
    )


HEADER = """# The offline quality–cost frontier of N-arm routing

Generated by `routet2i frontier --page docs/FRONTIER.md` (issue 12 item 6; code in
`router_model/lab/frontier*.py`). Per test set: k-fold by normalised prompt text. For each fold the per-model
quality predictor is one of two, both trained on the other folds only:
- **ridge** (`frontier_ridge.py`): per model, a ridge on the standardised cheap features (`features.py` without
  `log_nouns`, plus log token count; penalty α·n·I) plus γ × a ridge (penalty α_e·n·I) of its training residual
  on the pooled MiniLM embedding from `runs/inputs.npz`; (α, α_e, γ) shared by the set's models and chosen by a
  5-fold cross-validation inside the training folds (pooled squared error);
- **IRT**: `train_multi`'s model (linear tower, rank 8, cheap features + pooled embedding), its per-model offsets
  refitted on the training folds.

**The rule that picks one per fold, fixed before any test margin was read:** hold out a fifth of the training
folds' prompts (by prompt text), fit both predictors on the rest (the ridge tuning itself there), and score
them on the held-out prompts rated on every model by squared error after the best slope in [0, 1] on the
deviation from the model means (the shrinkage below, granted to both alike); the ridge is kept when its error
is strictly lower, else the IRT. Each fold's choice and tuned values are in `frontier.json`
(`predictor_folds`). Then each prompt's predicted deviation from the model means is shrunk by a slope fitted
on the other folds' out-of-fold predictions. All curves are on the pooled out-of-fold test prompts.

Methods: `single:<model>`; `random_mix` (cheapest ↔ best model in expectation); `length_policy` (the longest
prompts, in words, to the best model and the rest to the cheapest, swept over the share); `two_arm`, the
deployable two-arm router (for each fold and each budget on a grid of expected costs, the pair of models and
the share sent to the dearer one are chosen on the *other* folds' prompts, with their out-of-fold predictions
and true qualities, as the ranked split — the predicted gap ranks the prompts, the top share goes to the dearer
model — of best quality within the budget there; that pair and share are then applied to the fold's own prompts,
ranked by their own predicted gap, and the folds' realised cost and quality are combined weighted by fold size;
the other folds' predictions came from models that saw the fold, the same small leak the shrinkage slope
accepts); `two_arm_envelope`, an optimistic reference only (the ranked split of every pair on all test prompts,
upper envelope over pairs: the pair at each cost is chosen with the test labels, so no operator could deploy
it); `n_arm` (argmax predicted quality − λ·cost, λ swept over the quantiles of the predicted break-even prices,
no envelope); `oracle` (the same with the true qualities).
Margins are taken at matched costs: each curve is read at a budget by linear interpolation of its upper
envelope (a mix of two operating points costs their mean), holding its best point beyond its dearest one;
the grid spans the two curves' common budgets. CIs resample the test prompts with the predictions fixed.

## Reading (fixed text that quotes no number, except the bullet marked *generated*)

- **Predictor: the ridge wins the inner comparison** on nearly every fold of every set (the "Predictor per
  fold" line of each set), always with a non-zero γ: the embedding pays only as a shrunk correction of the
  cheap-feature ridge, and the IRT model does not beat it on the training folds' own hold-out.
- **The two-arm bar is deployable.** `two_arm` chooses its pair of models and its share per fold and budget
  on the other folds' prompts only, and is charged what that choice realises on the fold's own prompts; it uses
  the same predictor as the N-arm router. The former bar, the best pair at each cost chosen with the test
  labels, stays as `two_arm_envelope`, an optimistic reference that no operator could run. The envelope is
  not a strict upper bound of the deployable bar: each fold may settle on its own pair and ranks only its own
  prompts, so at some costs the deployable bar reads above it; where it reads below, that is the price of
  choosing the pair without the test labels.
{verdict}
- **How to read that verdict:** it asks for a point estimate ≥ 0 at every cost of a fine grid, so the one
  cost where the N-arm router dips most decides it (the cost is named above; a split between two neighbouring
  models can be hard to beat there); the worst-cost margin's CI says whether that dip is beyond resampling
  noise, and the mean margin says who is ahead on average. Both curves are read on their upper envelope over
  their own operating points (the margins' convention), alike for both.
- **N-arm vs the length policy:** on GenAI-Bench, where the cheapest arm (SDXL-Turbo) is good, the N-arm router
  is ahead on average over matched costs, with a CI whose lower end sits at about zero, and ahead beyond its
  CI at only one tabled budget (a quarter of the way); at the cheapest budgets and at its worst cost it is
  level, so "≥ the length policy at every cost" is **not shown**. Where the cheapest arm is weak (a GAN
  on AGIQA-3K and AIGCIQA2023, which the length policy must use) and on CEMS it is ahead.
- **N-arm vs single models at their own cost:** close to each; by construction its dearest point (λ = 0) is
  near the best model and its cheapest point is the cheapest model.
- **The headroom is large and the predictor is still the bottleneck:** the oracle curve sits far above every
  learned policy. Before the ridge, IRT ranks 2 / 8 / 16, L2 1e-3…1e-1, a shrinkage slope per model and extra
  `--train` sets were tried and did not move the margins beyond their CIs.
- The plotted `n_arm` and `two_arm` lines are raw sweeps (one point per λ, one per budget: they can dip where
  the predictor, or a pair chosen on the other folds, sends prompts to a worse arm); margins read every curve
  on its upper envelope. Percentile CIs of a non-smooth statistic (a worst case, an envelope) can exclude their
  own point estimate.

## Prices

Closed models: public per-image API prices (DALL-E 3 $0.040 standard 1024², DALL-E 2 $0.020 1024²,
Midjourney ~$0.03–0.05 per image by plan: the Standard plan's $30 for ~900 fast images, $0.033). Open
models: GPU-seconds per image at the model's usual steps and resolution on an A100 (our estimates, stated
per model below) at an assumed **$2.00 per GPU-hour** (0.56 m$ per GPU-second, a typical on-demand A100
price). Costs are in milli-dollars per image. What matters for routing is the ratio between arms: the closed
APIs cost 10–100× a local diffusion model, so the interesting part of every curve is the cheap end. CEMS needs
no price: its measured seconds per 512² image on an RTX 2080 Ti are the cost, per prompt (the router plans
with each model's mean time on the training folds; it is charged the prompt's own time).
"""


def write_page(data_root: str | Path, page: str | Path, cache: str | Path | None, bootstrap: int = 200) -> Path:
    """Run the four sets and write the page, its PNGs and a JSON of every result beside it."""
    from router_model.lab.frontier import run_frontier

    page = Path(page)
    root = Path(data_root)
    parts, results = [HEADER], {}
    for name, (rel, title) in RUNS.items():
        costs = [f"{raw}={c:.4g}" for raw, (c, _) in PRICES[name].items()] if name in PRICES else None
        result = run_frontier(root / rel, costs=costs, cache=cache, bootstrap=bootstrap)
        png = f"frontier_{name}.png"
        xlabel = "cost (m$ per image)" if costs else "cost (seconds per image, RTX 2080 Ti)"
        curves = {m: np.array([[p["cost"], p["quality"]] for p in v["points"]]) for m, v in result["methods"].items()}
        plot_frontier(curves, f"{title}: {result['prompts']} prompts", xlabel, page.parent / png)
        parts.append(section(result, title, png))
        results[name] = result
        print(f"{name}: {result['prompts']} prompts, {result['seconds']:.0f} s", flush=True)
    parts[0] = HEADER.replace("{verdict}", verdict(results))
    parts.insert(1, summary(results))
    page.write_text("\n".join(parts), encoding="utf-8")
    (page.parent / "frontier.json").write_text(json.dumps(results), encoding="utf-8")
    return page

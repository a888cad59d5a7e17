"""The results page: k-fold on three public pairs, GenAI-trained transfer to every other shared set,
leave-one-dataset-out, and CEMS k-fold with the paper's ablations → docs/RESULTS.md.

Every number on the page is computed by this run and written from the result dictionaries (each section's
JSON lies beside the page); the page says which command regenerated it, when, and with which seeds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from router_model.encoder import DEFAULT_ENCODER, TextEncoder
from router_model.lab.data import IMPORTERS, RoutingExample
from router_model.lab.evaluate import default_methods, evaluate
from router_model.lab.plots import plot_delta_p, plot_noun_win_rate
from router_model.lab.report_page import COMMAND, META, SECTIONS, assemble, read_meta
from router_model.lab.report_sets import CEMS, CemsSizes, SharedSets, encode_all, load_sets
from router_model.lab.report_transfer import cems_lodo_note, run_lodo, run_transfer
from router_model.lab.results import result_json


@dataclass(frozen=True)
class Pair:
    slug: str
    title: str
    source: str  # a key of data.IMPORTERS
    file: str
    edge: str
    cloud: str


GENAI = "genai_bench_ratings.json"
PAIRS = (
    Pair("genai_sd21_dalle3", "GenAI-Bench: SD 2.1 → DALL·E 3", "genai-bench", GENAI, "SDXL_2_1", "DALLE_3"),
    Pair("genai_sd21_sdxl", "GenAI-Bench: SD 2.1 → SDXL Base", "genai-bench", GENAI, "SDXL_2_1", "SDXL_Base"),
    Pair("agiqa_sd15_sdxl", "AGIQA-3K: SD 1.5 → SDXL", "agiqa3k", "agiqa3k_mos.csv", "sd1.5_normal", "xl2.2_normal"),
)
# The prompts each section uses by default (fixed random subsets, seed = the page seed; see report_sets), sized
# so that the page runs within about an hour on 2 CPU cores: CEMS tested on 2,000 in transfer/LODO, trained on
# 200 in LODO (as every other set); its k-fold (CEMS_FOLDS folds, 4 RouteT2I variants) runs on all 9,923 prompts,
# as issue 11 asks of the ablations (about 20 minutes since training scales: docs/BENCHMARKS.md).
CEMS_SIZES = CemsSizes(test=2000, train=200, kfold=0, other_train=200)
CEMS_FOLDS = 5
# on the k-fold and transfer sections beside the router: the cheap-feature prior alone (its trained tower at γ = 0),
# so the page shows what the tower adds in distribution (k-fold) and out of it (transfer)
PAGE_VARIANTS = ["routet2i_prior_only"]


def parse_sections(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """`kfold,transfer` → ("kfold", "transfer"); None or "all" → every section; "page" → none (only rebuild
    RESULTS.md from the section results already in the folder)."""
    if text is None or text == "all":
        return SECTIONS
    if text == "page":
        return ()
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        raise ValueError(f"unknown results-page section(s) {unknown or text!r}; choose from {', '.join(SECTIONS)}")
    return tuple(s for s in SECTIONS if s in names)


def _kfold_section(out_dir, data_dir, pairs, states, methods, common, log, record) -> dict[str, Any]:
    """Each pair's k-fold; `record` gets the section's files after every pair (kept: those already in the
    folder's `sections.json`, so pairs run by separate commands add up)."""
    files: list[str] = []
    for pair in pairs:
        log(f"results page: {pair.title}")
        examples = IMPORTERS[pair.source](data_dir / pair.file, pair.edge, pair.cloud)
        result = evaluate(examples, methods=methods, states=states.of(examples) if states else None, **common)
        result["pair"] = {"title": pair.title, "file": pair.file, "edge": pair.edge, "cloud": pair.cloud}
        (out_dir / f"{pair.slug}.json").write_text(result_json(result))
        plot_delta_p(result, out_dir / f"{pair.slug}_delta_p.png")
        plot_noun_win_rate(examples, out_dir / f"{pair.slug}_nouns.png")
        files.append(pair.slug)
        record({"files": files})
    return {"files": files}


def _cems_section(out_dir, sets: SharedSets, states, methods, common, log) -> dict[str, Any]:
    examples = sets.cems_kfold
    log(f"results page: CEMS k-fold on {len(examples)} prompts")
    result = evaluate(examples, methods=methods, states=states.of(examples) if states else None, **common)
    pair = examples[0]
    result["pair"] = {
        "title": "CEMS: SD-Turbo → SDXL-Turbo",
        "file": "ratings/cems_10k.csv.gz",
        "edge": pair.edge_model,
        "cloud": pair.cloud_model,
    }
    (out_dir / "cems_kfold.json").write_text(result_json(result))
    plot_delta_p(result, out_dir / "cems_kfold_delta_p.png")
    n, total = len(examples), sets.cems_total
    subset = "all" if n == total else f"a fixed random subset (seed {sets.seed}) of {n}"
    note = (
        f"k-fold over {subset} of the {total} CEMS prompts rated on both models "
        f"(CLIP ViT-g-14 score and NIMA aesthetics, each a quality dimension); {result['folds']} folds × "
        f"{result['repeats']} split seed(s)."
    )
    return {"note": note, "n": n, "total": total}


def _record(out_dir: Path, name: str, info: dict[str, Any], run_info: dict[str, Any]) -> None:
    """Put a section's entry into `sections.json` (read again first: another run may have written its own)."""
    meta = read_meta(out_dir)
    if "files" in info:  # k-fold pairs run by separate commands add up
        order = [p.slug for p in PAIRS]
        kept = {*meta.get(name, {}).get("files", []), *info["files"]}
        info = info | {"files": sorted(kept, key=lambda s: order.index(s) if s in order else len(order))}
    meta[name] = info | {
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": time.perf_counter() - run_info["started"],
        "seed": run_info["seed"],
        "command": run_info["command"],
    }
    (out_dir / META).write_text(json.dumps(meta, indent=2) + "\n")


def _record_with(out_dir: Path, name: str, run_info: dict[str, Any], settings: dict[str, Any], info: dict) -> None:
    _record(out_dir, name, info | settings, run_info)


def _save_cross(out_dir: Path, name: str, sets: SharedSets, run_info: dict[str, Any], section: dict[str, Any]) -> None:
    """Write a cross-set section (complete or so far) and its `sections.json` entry."""
    section |= {"cems_note": cems_lodo_note(sets), "cems_sizes": asdict(sets.sizes)}
    key = "held_out" if name == "lodo" else "targets"
    path = out_dir / f"{name}.json"
    if path.exists() and run_info.get("merge"):  # held-out sets run by separate commands add up
        earlier = json.loads(path.read_text()).get(key, {})
        section[key] = {n: section[key].get(n) or earlier[n] for n in sets.pairs if n in section[key] or n in earlier}
        section["complete"] = set(section[key]) == set(sets.pairs)
    path.write_text(result_json(section))
    _record(out_dir, name, {"complete": section["complete"]}, run_info)


def write_results_page(
    out_dir: Path,
    data_dir: Path = Path("../shared/data"),
    folds: int = 5,
    seed: int = 0,
    *,
    pairs: tuple[Pair, ...] = PAIRS,
    methods: list[str] | None = None,
    ablations: bool = False,
    bootstrap: int = 1000,
    repeats: int = 1,
    sections: Sequence[str] | str | None = None,
    cems_sizes: CemsSizes = CEMS_SIZES,
    cems_repeats: int = 1,
    cems_folds: int = CEMS_FOLDS,
    shared_sets: Sequence[str] | None = None,
    lodo_held_out: Sequence[str] | None = None,
    log: Callable[..., Any] | None = print,
) -> Path:
    """Run the requested `sections` (default all), write their JSON/PNGs into `out_dir`, rebuild `RESULTS.md`.

    Sections not requested keep their last results (from `out_dir`). `pairs`/`methods`/`shared_sets`
    narrow it (tests, quick looks); `methods` None = every default method (the CEMS section adds the three
    ablations)."""
    log = log or (lambda *_a, **_k: None)
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    chosen = parse_sections(sections)
    needed = [data_dir / p.file for p in pairs] if "kfold" in chosen else []
    needed += [data_dir / GENAI] if set(chosen) - {"kfold"} else []
    for path in needed:
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: rating file missing; pass the folder holding the public data "
                "(see ../shared/data/README.md for the sources)"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    label_free = {"random", "noun_count", "oracle"}
    needs_encoder = bool(chosen) and (methods is None or bool(set(methods) - label_free))
    encoder = TextEncoder(DEFAULT_ENCODER) if needs_encoder else DEFAULT_ENCODER
    cross = [s for s in chosen if s != "kfold"]
    cems_only = cross == ["cems"]  # then only the CEMS k-fold prompts are read and encoded
    sets = load_sets(data_dir, cems_sizes, seed, [CEMS] if cems_only else shared_sets) if cross else None
    kfold_examples: list[list[RoutingExample]] = []
    if "kfold" in chosen:
        kfold_examples = [IMPORTERS[p.source](data_dir / p.file, p.edge, p.cloud) for p in pairs]
    if cems_only and sets is not None:
        kfold_examples.append(sets.cems_kfold)
    states = encode_all(kfold_examples, None if cems_only else sets, encoder) if needs_encoder else None
    cmd_methods = methods if methods is not None else default_methods(ablations) + PAGE_VARIANTS
    extra = f" --results-sections {','.join(chosen)}"
    for name in chosen:
        run_info = {
            "started": time.perf_counter(),
            "seed": seed,
            "command": COMMAND.format(repeats=repeats, extra=(" --ablations" if ablations else "") + extra),
            "merge": lodo_held_out is not None,
        }
        common = {"seed": seed, "bootstrap": bootstrap, "log": log}
        if name == "kfold":
            kw = common | {"folds": folds, "repeats": repeats, "ablations": ablations}
            settings = {"folds": folds, "repeats": repeats, "methods": cmd_methods}
            record = partial(_record_with, out_dir, name, run_info, settings)
            info = _kfold_section(out_dir, data_dir, pairs, states, cmd_methods, kw, log, record) | settings
        elif name == "cems":
            cems_methods = methods if methods is not None else default_methods(ablations=True)
            kw = common | {"folds": cems_folds, "repeats": cems_repeats}
            info = _cems_section(out_dir, sets, states, cems_methods, kw, log) if CEMS in sets.pairs else {}
        else:
            save = partial(_save_cross, out_dir, name, sets, run_info)
            kw = {"methods": methods, "seed": seed, "bootstrap": bootstrap, "log": log, "save": save}
            if name == "transfer":
                save(run_transfer(sets, states, **kw | {"methods": cmd_methods}))
            else:
                save(run_lodo(sets, states, held_out=lodo_held_out, **kw))
            info = {"complete": json.loads((out_dir / f"{name}.json").read_text())["complete"]}
        _record(out_dir, name, info, run_info)
        log(f"results page: section {name} done in {(time.perf_counter() - run_info['started']) / 60:.1f} min")
    path = out_dir / "RESULTS.md"
    path.write_text(assemble(out_dir))
    log(f"wrote {path}")
    return path

"""Rated prompts: one prompt scored on several models, read from every public rating format we use.

`RatedPrompt` is the multi-model schema beside today's pair schema (`RoutingExample`): a prompt, its
dataset, and {canonical model id: {dimension: mean score}}. Readers aggregate raters and images by
the mean per (prompt, model, dimension); prompts are keyed by normalised text (case and whitespace
folded), so the same prompt twice in one file is one RatedPrompt. The `seconds` dimension is a cost
(lower is better), never a quality: `QUALITY` excludes it.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from router_model.model_ids import canonical_id

COST_DIMENSIONS = frozenset({"seconds"})
LONG_COLUMNS = ("prompt_id", "prompt", "model", "dimension", "score", "rater", "image")


def prompt_key(prompt: str) -> str:
    """Case- and whitespace-folded prompt text (the same key as the pair datasets' k-fold)."""
    return " ".join(prompt.lower().split())


@dataclass
class RatedPrompt:
    prompt: str
    dataset: str
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # model id -> dimension -> score

    @property
    def key(self) -> str:
        return prompt_key(self.prompt)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "dataset": self.dataset, "scores": self.scores}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RatedPrompt:
        scores = {m: {d: float(v) for d, v in dims.items()} for m, dims in data["scores"].items()}
        return cls(prompt=data["prompt"], dataset=data["dataset"], scores=scores)


def write_jsonl(path: str | Path, items: Iterable[RatedPrompt]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps(item.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> list[RatedPrompt]:
    with Path(path).open(encoding="utf-8") as fh:
        return [RatedPrompt.from_dict(json.loads(line)) for line in fh if line.strip()]


class _Aggregator:
    """Running means per (prompt key, model, dimension), remembering the first spelling of each prompt."""

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.text: dict[str, str] = {}
        self.sums: dict[str, dict[str, dict[str, list[float]]]] = {}

    def add(self, prompt: str, model: str, dimension: str, score: float) -> None:
        key = prompt_key(prompt)
        if not key:
            return
        self.text.setdefault(key, prompt.strip())
        cell = self.sums.setdefault(key, {}).setdefault(canonical_id(model, self.dataset), {})
        acc = cell.setdefault(dimension, [0.0, 0.0])
        acc[0] += score
        acc[1] += 1.0

    def items(self) -> list[RatedPrompt]:
        out = []
        for key, models in self.sums.items():
            scores = {m: {d: s / n for d, (s, n) in dims.items()} for m, dims in models.items()}
            out.append(RatedPrompt(self.text[key], self.dataset, scores))
        return out


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def read_long_csv(path: str | Path, dataset: str | None = None) -> list[RatedPrompt]:
    """The long format `prompt_id,prompt,model,dimension,score,rater,image` (.csv or .csv.gz)."""
    path = Path(path)
    dataset = dataset or dataset_name(path)
    agg = _Aggregator(dataset)
    with _open_text(path) as fh:
        reader = csv.DictReader(fh)
        missing = {"prompt", "model", "dimension", "score"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}:1: long-format header lacks {sorted(missing)}; columns must be {LONG_COLUMNS}")
        for line_no, row in enumerate(reader, start=2):
            try:
                score = float(row["score"])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{line_no}: score {row['score']!r} is not a number") from exc
            if np.isfinite(score):
                agg.add(row["prompt"], row["model"], row["dimension"], score)
    return agg.items()


def read_genai_bench(path: str | Path, dataset: str = "genai") -> list[RatedPrompt]:
    """genai_bench_ratings.json: three 1–5 alignment ratings per image."""
    agg = _Aggregator(dataset)
    for item in json.loads(Path(path).read_text(encoding="utf-8")).values():
        for model, ratings in item.get("models", {}).items():
            for r in ratings:
                agg.add(item["prompt"], model, "alignment", float(r))
    return agg.items()


def read_agiqa3k(path: str | Path, dataset: str = "agiqa3k") -> list[RatedPrompt]:
    """agiqa3k_mos.csv: perceptual quality and alignment MOS per `<generator>_<index>.jpg`."""
    agg = _Aggregator(dataset)
    with Path(path).open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            generator = row["name"].rsplit(".", 1)[0].rpartition("_")[0]
            agg.add(row["prompt"], generator, "quality", float(row["mos_quality"]))
            agg.add(row["prompt"], generator, "alignment", float(row["mos_align"]))
    return agg.items()


LONG_FILES = {
    "cems": "ratings/cems_10k.csv.gz",
    "aigiqa20k": "ratings/aigiqa20k_train.csv",
    "geneval": "ratings/geneval_human.csv",
    "seetrue": "ratings/seetrue_t2i.csv",
    "agiqa1k": "ratings/agiqa1k_mos.csv",
    "aigciqa2023": "ratings/aigciqa2023_levels.csv",
}


def dataset_name(path: Path) -> str:
    name = path.name.split(".")[0]
    for short, rel in LONG_FILES.items():
        if Path(rel).name.split(".")[0] == name:
            return short
    return name


def distinct_prompts(sets: dict[str, Sequence[RatedPrompt]]) -> list[str]:
    """Each normalised prompt of the sets once (its first spelling), in a stable order: what gets encoded."""
    texts: dict[str, str] = {}
    for items in sets.values():
        for it in items:
            texts.setdefault(it.key, it.prompt)
    return sorted(texts.values(), key=prompt_key)


def load_shared(root: str | Path) -> dict[str, list[RatedPrompt]]:
    """Every rated set under the shared data folder, by dataset name."""
    root = Path(root)
    sets = {
        "genai": read_genai_bench(root / "genai_bench_ratings.json"),
        "agiqa3k": read_agiqa3k(root / "agiqa3k_mos.csv"),
    }
    for name, rel in LONG_FILES.items():
        if (root / rel).exists():
            sets[name] = read_long_csv(root / rel, name)
    return sets


# ---------------------------------------------------------------- pairs


@dataclass(frozen=True)
class Pair:
    dataset: str
    edge: str
    cloud: str
    dimensions: tuple[str, ...]


NATURAL_PAIRS: dict[str, Pair] = {
    "genai": Pair("genai", "sd-2.1", "dall-e-3", ("alignment",)),
    "agiqa3k": Pair("agiqa3k", "sd-1.5", "sdxl", ("quality", "alignment")),
    "geneval": Pair("geneval", "sd-2.1", "deepfloyd-if-xl", ("caption_fit",)),
    "seetrue": Pair("seetrue", "sd-1.4", "sd-2.1", ("aligned",)),
    "aigciqa2023": Pair(
        "aigciqa2023", "aigciqa2023:stable-diffusion", "dall-e-2", ("quality", "authenticity", "alignment")
    ),
    "cems": Pair("cems", "sd-turbo", "sdxl-turbo", ("clip_score", "nima_score")),
    # AGIQA-1K: DeepAI's SD 2.0 and DreamStudio's SD inpainting 1.0 have no older/newer order; the
    # better on average (DeepAI, MOS 2.89 vs 1.64 on the 359 shared prompts) is the cloud.
    "agiqa1k": Pair("agiqa1k", "agiqa1k:SD-inpainting-1.0-dreamstudio", "agiqa1k:SD2.0-deepai", ("mos",)),
}


def quality_dimensions(items: Sequence[RatedPrompt]) -> list[str]:
    return sorted({d for it in items for dims in it.scores.values() for d in dims if d not in COST_DIMENSIONS})


def normalisation(items: Sequence[RatedPrompt]) -> dict[str, tuple[float, float]]:
    """Per dimension of one dataset: (mean, std) over every (prompt, model) cell."""
    stats = {}
    for dim in quality_dimensions(items):
        vals = np.array([dims[dim] for it in items for dims in it.scores.values() if dim in dims])
        stats[dim] = (float(vals.mean()), float(vals.std()) or 1.0)
    return stats


def to_pair_examples(items: Sequence[RatedPrompt], pair: Pair):
    """RoutingExamples (today's pair schema) for the prompts rated on both models of `pair` on every dimension."""
    from router_model.lab.data import RoutingExample

    out = []
    for it in items:
        e, c = it.scores.get(pair.edge), it.scores.get(pair.cloud)
        if e is None or c is None or any(d not in e or d not in c for d in pair.dimensions):
            continue
        out.append(
            RoutingExample(
                prompt=it.prompt,
                edge_model=pair.edge,
                cloud_model=pair.cloud,
                metrics=list(pair.dimensions),
                q_edge=[e[d] for d in pair.dimensions],
                q_cloud=[c[d] for d in pair.dimensions],
                source=pair.dataset,
            )
        )
    return out


def split_by_prompt(sets: dict[str, list[RatedPrompt]], held_out_keys: set[str]) -> dict[str, list[RatedPrompt]]:
    """Every set without the prompts whose normalised text is in `held_out_keys` (no leak across sets)."""
    return {name: [it for it in items if it.key not in held_out_keys] for name, items in sets.items()}

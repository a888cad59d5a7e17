"""Routing datasets: one example schema, JSONL storage, importers for public ratings, k-fold splits.

A dataset is a JSONL file of `RoutingExample`s plus a sidecar `<name>.prs.json` with the PRS
statistics (μ per metric and model, Γ, weights) the labels were computed with.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from router_model.lab.ratings import prompt_key
from router_model.prs import PRSStats, fit_prs_stats, pareto_relative_superiority


class DatasetError(ValueError):
    """A data file that cannot be read as asked; the message names the file and how to fix it."""


@dataclass
class RoutingExample:
    prompt: str
    edge_model: str
    cloud_model: str
    metrics: list[str]
    q_edge: list[float]
    q_cloud: list[float]
    prs: float | None = None
    source: str = "jsonl"
    id: str | None = None
    seed: int | None = None
    ratings: dict[str, Any] | None = field(default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        if not (len(self.metrics) == len(self.q_edge) == len(self.q_cloud)) or not self.metrics:
            raise ValueError("metrics, q_edge and q_cloud must be non-empty and of equal length")
        self.q_edge = [float(v) for v in self.q_edge]
        self.q_cloud = [float(v) for v in self.q_cloud]

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoutingExample:
        known = {f for f in cls.__dataclass_fields__}
        missing = {"prompt", "edge_model", "cloud_model", "metrics", "q_edge", "q_cloud"} - data.keys()
        if missing:
            raise ValueError(f"missing field(s): {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in data.items() if k in known})


# ---------------------------------------------------------------- JSONL storage


def prs_stats_path(dataset_path: str | Path) -> Path:
    path = Path(dataset_path)
    return path.with_name(path.stem + ".prs.json")


def iter_examples(path: str | Path) -> Iterator[RoutingExample]:
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield RoutingExample.from_dict(json.loads(line))
            except (ValueError, TypeError) as exc:
                raise DatasetError(f"{path}:{line_no}: malformed routing example: {exc}") from exc


def read_examples(path: str | Path) -> list[RoutingExample]:
    return list(iter_examples(path))


def append_examples(path: str | Path, examples: Iterable[RoutingExample]) -> int:
    """Append examples one complete line at a time (flushed), so an interrupted run loses nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("a", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")
            fh.flush()
            count += 1
    return count


def write_dataset(path: str | Path, examples: Sequence[RoutingExample], stats: PRSStats) -> None:
    """Write a whole dataset (replacing it) and its PRS statistics sidecar."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    append_examples(tmp, examples)
    tmp.replace(path)
    stats.save(prs_stats_path(path))


def quality_arrays(examples: Sequence[RoutingExample]) -> tuple[np.ndarray, np.ndarray]:
    """q_edge and q_cloud as [n, k] arrays."""
    return (
        np.array([ex.q_edge for ex in examples], dtype=np.float64),
        np.array([ex.q_cloud for ex in examples], dtype=np.float64),
    )


def label_with_prs(
    examples: Sequence[RoutingExample],
    stats: PRSStats | None = None,
    gamma: float = 1.0,
    weights: Sequence[float] | None = None,
) -> PRSStats:
    """Set `prs` on every example; fit the statistics on these examples unless given."""
    q_e, q_c = quality_arrays(examples)
    if stats is None:
        stats = fit_prs_stats(q_e, q_c, examples[0].metrics, gamma=gamma, weights=weights)
    for ex, value in zip(examples, pareto_relative_superiority(q_e, q_c, stats), strict=True):
        ex.prs = float(value)
    return stats


def check_consistent(examples: Sequence[RoutingExample], path: str | Path = "dataset") -> None:
    if not examples:
        raise DatasetError(f"{path}: no examples")
    first = examples[0]
    for i, ex in enumerate(examples):
        if (ex.edge_model, ex.cloud_model, ex.metrics) != (first.edge_model, first.cloud_model, first.metrics):
            raise DatasetError(
                f"{path}: example {i + 1} pairs {ex.edge_model}→{ex.cloud_model} on {ex.metrics}, "
                f"but the first pairs {first.edge_model}→{first.cloud_model} on {first.metrics}; "
                "one dataset holds one model pair and one metric set"
            )


# ---------------------------------------------------------------- k-fold splits


def kfold_splits(examples: Sequence[RoutingExample], k: int = 5, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Deterministic k-fold (train_idx, test_idx) splits grouped by prompt text.

    The same prompt (case and whitespace folded) never sits in two folds.
    """
    if k < 2:
        raise ValueError("k-fold needs k >= 2")
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(prompt_key(ex.prompt), []).append(i)
    if len(groups) < k:
        raise DatasetError(f"{len(groups)} distinct prompts cannot make {k} folds")
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    fold_of = {key: j % k for j, key in enumerate(keys)}
    splits = []
    for fold in range(k):
        test = sorted(i for key in keys if fold_of[key] == fold for i in groups[key])
        test_set = set(test)
        train = [i for i in range(len(examples)) if i not in test_set]
        splits.append((train, test))
    return splits


def stable_seed(text: str, base: int = 0) -> int:
    """A per-prompt seed that does not depend on the order of the prompt file."""
    digest = hashlib.sha256(f"{base}:{text}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


# ---------------------------------------------------------------- importers of public ratings


def _pick(name: str, available: Iterable[str], path: Path, role: str) -> str:
    available = sorted(set(available))
    if name not in available:
        raise DatasetError(f"{path}: {role} model {name!r} is not in this file; models it has: {', '.join(available)}")
    return name


def genai_bench_models(path: str | Path) -> list[str]:
    data = _load_json(Path(path))
    return sorted({m for item in data.values() for m in item.get("models", {})})


def _load_json(path: Path) -> Any:
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from exc


def import_genai_bench(path: str | Path, edge: str, cloud: str) -> list[RoutingExample]:
    """GenAI-Bench human ratings: one dimension, the mean of the three 1–5 alignment ratings."""
    path = Path(path)
    data = _load_json(path)
    models = {m for item in data.values() for m in item.get("models", {})}
    _pick(edge, models, path, "edge")
    _pick(cloud, models, path, "cloud")
    examples = []
    for key, item in data.items():
        ratings = item.get("models", {})
        if edge not in ratings or cloud not in ratings:
            continue
        try:
            q_e, q_c = float(np.mean(ratings[edge])), float(np.mean(ratings[cloud]))
            examples.append(
                RoutingExample(
                    prompt=item["prompt"],
                    edge_model=edge,
                    cloud_model=cloud,
                    metrics=["alignment"],
                    q_edge=[q_e],
                    q_cloud=[q_c],
                    source="genai-bench",
                    id=str(item.get("id", key)),
                    ratings={"edge": list(ratings[edge]), "cloud": list(ratings[cloud])},
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{path}: entry {key!r} is malformed: {exc}") from exc
    return examples


AGIQA_DIMS = {"quality": ("mos_quality", "std_quality"), "alignment": ("mos_align", "std_align")}


def _agiqa_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"name", "prompt", "mos_quality", "mos_align"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise DatasetError(f"{path}:1: AGIQA-3K header must have columns {sorted(need)}, got {reader.fieldnames}")
        return [(line_no, row) for line_no, row in enumerate(reader, start=2)]


def _agiqa_split_name(name: str, path: Path, line_no: int) -> tuple[str, str]:
    stem = name.rsplit(".", 1)[0]
    generator, sep, index = stem.rpartition("_")
    if not sep or not index.isdigit():
        raise DatasetError(f"{path}:{line_no}: name {name!r} is not <generator>_<index>.jpg")
    return generator, index


def agiqa3k_models(path: str | Path) -> list[str]:
    path = Path(path)
    return sorted({_agiqa_split_name(r["name"], path, n)[0] for n, r in _agiqa_rows(path)})


def import_agiqa3k(path: str | Path, edge: str, cloud: str) -> list[RoutingExample]:
    """AGIQA-3K MOS: two dimensions (perceptual quality, alignment); the same index is the same prompt."""
    path = Path(path)
    by_model: dict[str, dict[str, tuple[int, dict[str, str]]]] = {}
    for line_no, row in _agiqa_rows(path):
        generator, index = _agiqa_split_name(row["name"], path, line_no)
        by_model.setdefault(generator, {})[index] = (line_no, row)
    _pick(edge, by_model, path, "edge")
    _pick(cloud, by_model, path, "cloud")
    examples = []
    for index in sorted(set(by_model[edge]) & set(by_model[cloud])):
        (ln_e, row_e), (ln_c, row_c) = by_model[edge][index], by_model[cloud][index]
        try:
            q_e = [float(row_e[mos]) for mos, _ in AGIQA_DIMS.values()]
            q_c = [float(row_c[mos]) for mos, _ in AGIQA_DIMS.values()]
        except ValueError as exc:
            raise DatasetError(f"{path}:{ln_e} or {ln_c}: MOS is not a number: {exc}") from exc
        examples.append(
            RoutingExample(
                prompt=row_e["prompt"],
                edge_model=edge,
                cloud_model=cloud,
                metrics=list(AGIQA_DIMS),
                q_edge=q_e,
                q_cloud=q_c,
                source="agiqa3k",
                id=index,
                ratings={
                    "edge": {
                        d: {"mos": float(row_e[m]), "std": float(row_e[s] or "nan")} for d, (m, s) in AGIQA_DIMS.items()
                    },
                    "cloud": {
                        d: {"mos": float(row_c[m]), "std": float(row_c[s] or "nan")} for d, (m, s) in AGIQA_DIMS.items()
                    },
                },
            )
        )
    return examples


def import_jsonl(path: str | Path, edge: str | None = None, cloud: str | None = None) -> list[RoutingExample]:
    """Users' own data: RoutingExample lines; `edge`/`cloud` select one pair when the file holds several."""
    path = Path(path)
    examples = read_examples(path)
    pairs = {(ex.edge_model, ex.cloud_model) for ex in examples}
    if edge is not None:
        _pick(edge, {e for e, _ in pairs}, path, "edge")
        examples = [ex for ex in examples if ex.edge_model == edge]
    if cloud is not None:
        _pick(cloud, {c for _, c in pairs}, path, "cloud")
        examples = [ex for ex in examples if ex.cloud_model == cloud]
    return examples


def import_ratings(path: str | Path, edge: str, cloud: str) -> list[RoutingExample]:
    """The long ratings format (`prompt_id,prompt,model,dimension,score,rater,image`): see `rated_files`."""
    from router_model.lab.rated_files import import_pair

    return import_pair(path, edge, cloud)


IMPORTERS = {
    "genai-bench": import_genai_bench,
    "agiqa3k": import_agiqa3k,
    "ratings": import_ratings,
    "jsonl": import_jsonl,
}


# ---------------------------------------------------------------- prompt files (traffic without labels)


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from plain text (one per line), COCO captions TSV, PartiPrompts TSV or DiffusionDB JSON."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        items = data.values() if isinstance(data, dict) else data
        prompts = [str(it.get("text") or it.get("prompt") or "") if isinstance(it, dict) else str(it) for it in items]
    elif path.suffix == ".tsv":
        rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
        column = next((c for c in ("caption", "Prompt", "prompt", "text") if rows and c in rows[0]), None)
        if column is None:
            raise DatasetError(f"{path}:1: TSV needs a caption, Prompt, prompt or text column")
        prompts = [row[column] for row in rows]
    else:
        prompts = text.splitlines()
    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise DatasetError(f"{path}: the prompt file has no prompts")
    return prompts

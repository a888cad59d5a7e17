"""Rating files as the CLI sees them: read any rated source as `RatedPrompt`s, cut one pair out, per-model means.

`dataset import --source ratings` (the long CSV format) goes through `import_pair`: model names may be
spelled as in the file or as canonical ids (`model_ids`), and the pair dataset names them by canonical
id. `--multi` writes the `RatedPrompt`s themselves. `dataset stats` on a long CSV or a rated JSONL uses
`model_means`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from router_model.lab.data import DatasetError, RoutingExample
from router_model.lab.ratings import (
    COST_DIMENSIONS,
    Pair,
    RatedPrompt,
    dataset_name,
    read_agiqa3k,
    read_genai_bench,
    read_jsonl,
    read_long_csv,
    to_pair_examples,
)
from router_model.model_ids import canonical_id

READERS = {"ratings": read_long_csv, "genai-bench": read_genai_bench, "agiqa3k": read_agiqa3k, "rated": read_jsonl}


def read_rated(path: str | Path, source: str) -> list[RatedPrompt]:
    """Every prompt of a rated file, aggregated per (prompt, canonical model, dimension)."""
    path = Path(path)
    if source not in READERS:
        raise DatasetError(f"{path}: source {source!r} has no multi-model reader; use one of {sorted(READERS)}")
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    if source == "ratings":
        items = read_long_csv(path)
    elif source == "rated":
        items = read_jsonl(path)
    else:
        items = READERS[source](path)
    if not items:
        raise DatasetError(f"{path}: no rated prompt in this file")
    return items


def _resolve(name: str, dataset: str, known: Sequence[str]) -> str | None:
    """The file's id for a user-given name (raw spelling, canonical id or `<dataset>:<name>`), None if absent."""
    for candidate in (canonical_id(name, dataset), canonical_id(name), f"{dataset}:{name}"):
        if candidate in known:
            return candidate
    return None


def import_pair(path: str | Path, edge: str, cloud: str) -> list[RoutingExample]:
    """Today's pair dataset from a long-format ratings file: prompts rated on both models on every shared
    quality dimension (the `seconds` cost is never one), models named by canonical id."""
    path = Path(path)
    items = read_rated(path, "ratings")
    dataset = items[0].dataset if items else dataset_name(path)
    known = sorted({m for it in items for m in it.scores})
    ids = {role: _resolve(name, dataset, known) for role, name in (("edge", edge), ("cloud", cloud))}
    unknown = [f"{role} {name!r}" for (role, name) in (("edge", edge), ("cloud", cloud)) if ids[role] is None]
    if unknown:
        raise DatasetError(f"{path}: unknown model(s) {', '.join(unknown)}; models it has: {', '.join(known)}")
    e, c = ids["edge"], ids["cloud"]
    if e == c:
        raise DatasetError(f"{path}: edge and cloud are the same model ({e})")
    dims = sorted(
        {d for it in items if e in it.scores and c in it.scores for d in it.scores[e] if d in it.scores[c]}
        - COST_DIMENSIONS
    )
    if not dims:
        raise DatasetError(f"{path}: no prompt is rated on a quality dimension for both {e} and {c}")
    examples = to_pair_examples(items, Pair(dataset, e, c, tuple(dims)))
    if not examples:
        raise DatasetError(f"{path}: no prompt is rated for both {e} and {c} on all of {dims}")
    return examples


def model_means(items: Sequence[RatedPrompt]) -> dict[str, dict[str, float]]:
    """Per canonical model: prompts rated and the mean over prompts per dimension (NaN where it has none)."""
    dims = sorted({d for it in items for v in it.scores.values() for d in v})
    out: dict[str, dict[str, float]] = {}
    for model in sorted({m for it in items for m in it.scores}):
        rated = [it.scores[model] for it in items if model in it.scores]
        row: dict[str, float] = {"n": len(rated)}
        for d in dims:
            vals = [v[d] for v in rated if d in v]
            row[d] = float(np.mean(vals)) if vals else float("nan")
        out[model] = row
    return out


def is_rated_jsonl(path: str | Path) -> bool:
    """Whether a .jsonl holds `RatedPrompt`s (a `scores` field) rather than pair examples."""
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                try:
                    return "scores" in json.loads(line) and "edge_model" not in json.loads(line)
                except json.JSONDecodeError:
                    return False
    return False

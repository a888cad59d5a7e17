"""Plain statistics of rating files and routing datasets (what `routet2i dataset stats` prints)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from router_model.lab.data import AGIQA_DIMS, DatasetError, RoutingExample, label_with_prs
from router_model.lab.noun_buckets import outcome


def detect_source(path: str | Path) -> str:
    """'genai-bench', 'agiqa3k', 'ratings' (long CSV, .csv.gz too), 'rated' (RatedPrompt JSONL) or 'jsonl'
    from a file's name and first bytes."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    if path.name.endswith(".csv.gz"):
        return "ratings"
    head = path.open(encoding="utf-8").read(4096).lstrip()
    if path.suffix == ".csv" and head.startswith("name,prompt"):
        return "agiqa3k"
    if path.suffix == ".csv" and {"prompt", "model", "dimension", "score"} <= set(head.splitlines()[0].split(",")):
        return "ratings"
    if path.suffix == ".json" and head.startswith("{") and '"models"' in path.read_text(encoding="utf-8")[:20000]:
        return "genai-bench"
    if path.suffix == ".jsonl":
        from router_model.lab.rated_files import is_rated_jsonl

        return "rated" if is_rated_jsonl(path) else "jsonl"
    raise DatasetError(
        f"{path}: not a GenAI-Bench ratings JSON, an AGIQA-3K CSV, a long-format ratings CSV "
        "(prompt_id,prompt,model,dimension,score,rater,image) or a .jsonl dataset"
    )


def source_model_means(path: str | Path, source: str) -> dict[str, dict[str, float]]:
    """Per model: number of images and mean rating per dimension, straight from the raw file."""
    path = Path(path)
    sums: dict[str, dict[str, list[float]]] = {}
    if source == "genai-bench":
        for item in json.loads(path.read_text(encoding="utf-8")).values():
            for model, ratings in item["models"].items():
                sums.setdefault(model, {}).setdefault("alignment", []).append(float(np.mean(ratings)))
    elif source == "agiqa3k":
        with path.open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                model = row["name"].rsplit(".", 1)[0].rpartition("_")[0]
                for dim, (mos, _) in AGIQA_DIMS.items():
                    sums.setdefault(model, {}).setdefault(dim, []).append(float(row[mos]))
    elif source in ("ratings", "rated"):
        from router_model.lab.rated_files import model_means, read_rated

        return model_means(read_rated(path, source))
    else:
        raise ValueError(f"no raw model means for source {source!r}")
    return {
        model: {"n": len(next(iter(dims.values())))} | {d: float(np.mean(v)) for d, v in dims.items()}
        for model, dims in sorted(sums.items())
    }


def pair_summary(examples: Sequence[RoutingExample]) -> dict:
    """Prompts, mean quality per model and metric, and how often the cloud image wins (by PRS) or ties."""
    if not examples:
        raise DatasetError("no examples to summarise")
    if any(ex.prs is None for ex in examples):
        examples = [RoutingExample(**ex.__dict__) for ex in examples]
        label_with_prs(examples)
    q_e = np.array([ex.q_edge for ex in examples])
    q_c = np.array([ex.q_cloud for ex in examples])
    outcomes = [outcome(ex.prs) for ex in examples]
    n = len(examples)
    return {
        "edge": examples[0].edge_model,
        "cloud": examples[0].cloud_model,
        "prompts": n,
        "metrics": examples[0].metrics,
        "mean_edge": q_e.mean(0).tolist(),
        "mean_cloud": q_c.mean(0).tolist(),
        "cloud_better_per_metric": (q_c > q_e).mean(0).tolist(),
        "cloud_wins": outcomes.count("cloud") / n,
        "edge_wins": outcomes.count("edge") / n,
        "ties": outcomes.count("tie") / n,
        "mean_prs": float(np.mean([ex.prs for ex in examples])),
    }

"""Training data for the train/test protocols: several example sets merged into one, test prompts removed,
and the single-pair view that the pair-only methods train on.

Several sets are put on one scale per dataset: each metric is z-scored over the edge and cloud values of
the examples of one `source` (a dataset's examples share their rating scale, so a model seen in two of
its pairs keeps one level); when the sets do not share one metric list, every example keeps one metric,
`quality_z`, the mean of its z-scores. One set is passed through unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from router_model.lab.data import DatasetError, RoutingExample
from router_model.lab.ratings import prompt_key

MERGED_METRIC = "quality_z"
GENERIC_PAIR = ("edge", "cloud")


def merge_training_sets(sets: Sequence[Sequence[RoutingExample]]) -> list[RoutingExample]:
    """The union of `sets` (see the module docstring for the scale); empty sets are ignored."""
    sets = [list(s) for s in sets if len(s)]
    if not sets:
        return []
    if len(sets) == 1:
        return sets[0]
    examples = [ex for s in sets for ex in s]
    metric_lists = {tuple(ex.metrics) for ex in examples}
    z: list[dict[str, tuple[float, float]]] = [{} for _ in examples]  # per example: metric → (edge, cloud)
    by_source: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        by_source.setdefault(ex.source, []).append(i)
    for idx in by_source.values():
        for metric in sorted({m for i in idx for m in examples[i].metrics}):
            rows = [(i, examples[i].metrics.index(metric)) for i in idx if metric in examples[i].metrics]
            values = np.array([[examples[i].q_edge[j], examples[i].q_cloud[j]] for i, j in rows])
            mean, std = float(values.mean()), float(values.std())
            std = std if std > 1e-12 else 1.0
            for (i, _), (e, c) in zip(rows, values, strict=True):
                z[i][metric] = ((e - mean) / std, (c - mean) / std)
    merged = []
    for ex, zi in zip(examples, z, strict=True):
        ze, zc = [zi[m][0] for m in ex.metrics], [zi[m][1] for m in ex.metrics]
        if len(metric_lists) > 1:
            ze, zc = [float(np.mean(ze))], [float(np.mean(zc))]
        metrics = list(ex.metrics) if len(metric_lists) == 1 else [MERGED_METRIC]
        merged.append(dataclasses.replace(ex, metrics=metrics, q_edge=ze, q_cloud=zc, prs=None))
    return merged


def drop_test_prompts(
    train: Sequence[RoutingExample], test: Sequence[RoutingExample]
) -> tuple[list[RoutingExample], int]:
    """`train` without the examples whose normalised prompt text is also a test prompt, and how many went."""
    test_keys = {prompt_key(ex.prompt) for ex in test}
    kept = [ex for ex in train if prompt_key(ex.prompt) not in test_keys]
    return kept, len(train) - len(kept)


def single_pair_view(train: Sequence[RoutingExample]) -> list[RoutingExample]:
    """`train` as one model pair for the methods that learn one pair's gap (RouteT2I, the pair classifiers):
    unchanged when it holds one pair, else every example relabelled as the generic pair `edge` → `cloud`."""
    train = list(train)
    if len({(ex.edge_model, ex.cloud_model) for ex in train}) <= 1:
        return train
    return [dataclasses.replace(ex, edge_model=GENERIC_PAIR[0], cloud_model=GENERIC_PAIR[1]) for ex in train]


def check_training_metrics(train: Sequence[RoutingExample]) -> None:
    """Training data may hold several pairs but one metric list (merge several sets to get one)."""
    lists = {tuple(ex.metrics) for ex in train}
    if len(lists) > 1:
        raise DatasetError(f"training data mixes metric lists {sorted(lists)}; merge the sets with merge_training_sets")

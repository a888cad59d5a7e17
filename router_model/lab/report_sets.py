"""The example sets of the cross-set sections of the results page, and their token states encoded once.

Every shared set is read as its natural pair (`ratings.NATURAL_PAIRS`). CEMS has 9,923 prompts: the page
uses fixed random subsets of it (seeded, nested: the training subset is the start of the test subset), so
every section sees the same prompts and one `PromptStates` holds them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router_model.lab.data import RoutingExample
from router_model.lab.protocols import PromptStates
from router_model.lab.ratings import NATURAL_PAIRS, load_shared, to_pair_examples

TRANSFER_SOURCE = "genai"  # GenAI-Bench SD 2.1 → DALL·E 3, all 416 prompts
TARGET_SETS = ("genai", "agiqa3k", "geneval", "seetrue", "aigciqa2023")  # the sets issue 11's LODO target names
CEMS = "cems"


@dataclass(frozen=True)
class CemsSizes:
    """How many CEMS prompts each section uses (0 = all): as a test set, as a LODO training set, for its k-fold;
    `other_train`: at most this many prompts of every other set as a LODO training set (0 = all)."""

    test: int = 0
    train: int = 1000
    kfold: int = 0
    other_train: int = 0


@dataclass
class SharedSets:
    pairs: dict[str, list[RoutingExample]]  # natural-pair examples per set; CEMS as the test subset
    cems_train: list[RoutingExample]  # CEMS as a LODO training set
    train_views: dict[str, list[RoutingExample]]  # the other sets as LODO training sets (cut to other_train)
    cems_kfold: list[RoutingExample]  # CEMS for its k-fold section
    cems_total: int  # CEMS prompts rated on both models before any cut
    sizes: CemsSizes
    seed: int


def cems_order(n: int, seed: int) -> np.ndarray:
    """A fixed permutation of the CEMS examples: every subset is a prefix of it."""
    return np.random.default_rng(seed).permutation(n)


def _prefix(examples: Sequence[RoutingExample], order: np.ndarray, n: int) -> list[RoutingExample]:
    keep = order if n <= 0 or n >= len(order) else order[:n]
    return [examples[i] for i in sorted(keep.tolist())]


def load_sets(
    data_dir: str | Path, sizes: CemsSizes = CemsSizes(), seed: int = 0, names: Sequence[str] | None = None
) -> SharedSets:
    """Natural-pair examples of every shared set present under `data_dir` (or of `names` only)."""
    rated = load_shared(data_dir)
    wanted = [n for n in NATURAL_PAIRS if n in rated and (names is None or n in names)]
    pairs = {n: to_pair_examples(rated[n], NATURAL_PAIRS[n]) for n in wanted}
    cems = pairs.get(CEMS, [])
    order = cems_order(len(cems), seed)
    if cems:
        pairs[CEMS] = _prefix(cems, order, sizes.test)
    views = {n: _prefix(ex, cems_order(len(ex), seed), sizes.other_train) for n, ex in pairs.items() if n != CEMS}
    return SharedSets(
        pairs=pairs,
        train_views=views,
        cems_train=_prefix(cems, order, sizes.train) if cems else [],
        cems_kfold=_prefix(cems, order, sizes.kfold) if cems else [],
        cems_total=len(cems),
        sizes=sizes,
        seed=seed,
    )


def training_view(sets: SharedSets, name: str) -> list[RoutingExample]:
    """A set as LODO training data (cut to its fixed training subset)."""
    return sets.cems_train if name == CEMS else sets.train_views[name]


def encode_all(extra: Sequence[Sequence[RoutingExample]], sets: SharedSets | None, encoder) -> PromptStates:
    """One `PromptStates` over `extra` and every example set of `sets`: each distinct prompt encoded once."""
    groups = list(extra)
    if sets is not None:
        groups += [*sets.pairs.values(), *sets.train_views.values(), sets.cems_train, sets.cems_kfold]
    return PromptStates(groups, encoder)

"""Evaluation protocols beyond k-fold: train on a list of example sets and test on another, or score a
shipped checkpoint on any pair with no training data at all.

`evaluate_transfer` is the one reusable step of cross-set protocols: a leave-one-dataset-out loop calls
it once per held-out set with the other sets as `train_sets`, and passes one `PromptStates` so that
every prompt is encoded once for the whole loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from router_model.encoder import DEFAULT_ENCODER, TextEncoder, TokenStates
from router_model.lab.baselines import BASELINES
from router_model.lab.baselines_extra import TRAINING_FREE
from router_model.lab.data import DatasetError, RoutingExample
from router_model.lab.evaluate import default_methods, evaluate
from router_model.lab.training_sets import drop_test_prompts, merge_training_sets


class PromptStates:
    """Token states of every distinct prompt of some example sets, encoded once; rows looked up by prompt."""

    def __init__(self, sets: Sequence[Sequence[RoutingExample]], encoder: str | TextEncoder = DEFAULT_ENCODER):
        unique = list(dict.fromkeys(ex.prompt for s in sets for ex in s))
        self.row = {prompt: i for i, prompt in enumerate(unique)}
        self.states = (encoder if isinstance(encoder, TextEncoder) else TextEncoder(encoder)).encode(unique)

    def of(self, examples: Sequence[RoutingExample]) -> TokenStates:
        missing = [ex.prompt for ex in examples if ex.prompt not in self.row]
        if missing:
            raise KeyError(f"{len(missing)} prompt(s) were not encoded: build PromptStates from every set")
        return self.states.subset(torch.tensor([self.row[ex.prompt] for ex in examples], dtype=torch.long))


def evaluate_transfer(
    train_sets: Sequence[Sequence[RoutingExample]],
    test: Sequence[RoutingExample],
    *,
    methods: Sequence[str] | None = None,
    router_dir: str | Path | None = None,
    prompt_states: PromptStates | None = None,
    log: Callable[..., Any] | None = print,
    **evaluate_kwargs: Any,
) -> dict[str, Any]:
    """Train every learned method on the union of `train_sets`, test on `test` (one pair).

    The sets are merged on one scale (`training_sets.merge_training_sets`), and every training example
    whose normalised prompt text is also a test prompt is dropped first: a test prompt is never trained
    on. `prompt_states` (built from these sets, or more) saves encoding them again. The result is
    `evaluate`'s, plus `n_train_dropped` and `train_set_sizes`.
    """
    emit = log or (lambda *_a, **_k: None)
    test = list(test)
    train, dropped = drop_test_prompts(merge_training_sets(train_sets), test)
    emit(f"dropped {dropped} training example(s) whose prompt is also a test prompt; {len(train)} left to train on")
    if not train:
        raise DatasetError("no training example is left once the test prompts are removed")
    if prompt_states is not None:
        evaluate_kwargs["states"] = prompt_states.of(train + test)
    result = evaluate(test, methods=methods, train_examples=train, router_dir=router_dir, log=log, **evaluate_kwargs)
    return result | {"n_train_dropped": dropped, "train_set_sizes": [len(s) for s in train_sets]}


def checkpoint_methods(requested: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(methods to run, learned methods skipped) when there is no training data: the training-free methods
    always, in table order; `routet2i` is the checkpoint itself and is neither run nor skipped."""
    requested = list(requested) if requested is not None else default_methods()
    run = [m for m in BASELINES if m in TRAINING_FREE]
    skipped = [m for m in requested if m not in TRAINING_FREE and m not in ("routet2i", "checkpoint")]
    return run, skipped


def evaluate_checkpoint(
    test: Sequence[RoutingExample],
    router_dir: str | Path,
    *,
    methods: Sequence[str] | None = None,
    log: Callable[..., Any] | None = print,
    **evaluate_kwargs: Any,
) -> dict[str, Any]:
    """The checkpoint (method "checkpoint") and `TRAINING_FREE` on `test`, with no training data.

    Learned methods that would need training are skipped and listed under `skipped`.
    """
    emit = log or (lambda *_a, **_k: None)
    run, skipped = checkpoint_methods(methods)
    if skipped:
        emit(f"skipped (they need training data; give --train): {', '.join(skipped)}")
    result = evaluate(test, methods=run, train_examples=[], router_dir=router_dir, log=log, **evaluate_kwargs)
    return result | {"skipped": skipped}

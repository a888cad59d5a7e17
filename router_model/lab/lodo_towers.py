"""Leave-one-dataset-out of the many-model router's text towers side by side (`evaluate --lodo --multi-tower`).

Every tower is trained on the same data the same way (`train_multi`: the IRT quality cells and the pair
gaps, dataset-balanced, early-stopped on an inner validation split), from one input table built from the
encoder's token states (`state_cache`: each prompt encoded once, cached): "linear"/"mlp" read their mean
pool, "moe" the token states themselves (the paper's MoE). "ridge" is the shipped closed-form design on the
same table. Big training sets are cut to a fixed subset (`cap_sets`) so that a held-out set trains in minutes;
a held-out set is always tested whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router_model.encoder import DEFAULT_ENCODER, TokenStates
from router_model.lab.ratings import Pair, RatedPrompt, distinct_prompts, prompt_key
from router_model.lab.train_multi import PromptInputs, train_multi
from router_model.multi_router import MultiRouter, MultiRouterConfig

TOWER_CHOICES = ("ridge", "linear", "mlp", "moe")
# training settings per tower, set for run time, not by results (the moe tower trains on mini-batches of token
# states, ~3 s an epoch on 600-prompt-capped sets on a shared 2-core CPU; the linear tower full-batch as shipped)
TOWER_TRAINING: dict[str, dict[str, Any]] = {
    "linear": {},
    "mlp": {},
    "moe": {"lr": 3e-3, "max_epochs": 15, "patience": 4, "batch_size": 128},
}
# a learned method: training sets → scorer of (input rows, pair) → (cloud advantage, head)
Scorer = Callable[[np.ndarray, Pair], tuple[np.ndarray, str]]
Fit = Callable[[dict[str, list[RatedPrompt]]], Scorer]


def parse_towers(text: str) -> list[str]:
    towers = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in towers if t not in TOWER_CHOICES]
    if not towers or bad:
        raise ValueError(f"--multi-tower takes a comma-separated list of {', '.join(TOWER_CHOICES)}, got {text!r}")
    return list(dict.fromkeys(towers))


def cap_sets(sets: dict[str, list[RatedPrompt]], cap: int | None, seed: int = 0) -> dict[str, list[RatedPrompt]]:
    """Each set cut to at most `cap` prompts: a fixed pseudo-random subset (by a hash of seed and prompt text)."""
    if cap is None:
        return sets
    if cap < 1:
        raise ValueError(f"the training cap must be >= 1 prompt, got {cap}")

    def rank(it: RatedPrompt) -> bytes:
        return hashlib.sha256(f"{seed}:{it.key}".encode()).digest()

    return {name: items if len(items) <= cap else sorted(items, key=rank)[:cap] for name, items in sets.items()}


def _features(prompts: Sequence[str], cache_dir: str | Path) -> np.ndarray:
    """Cheap features of `prompts` (spaCy's noun count included: the noun_count baseline), cached like the states."""
    from router_model.features import prompt_features

    digest = hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:20]
    path = Path(cache_dir).expanduser() / f"features-{len(prompts)}-{digest}.npy"
    if path.exists():
        return np.load(path)
    feats = prompt_features(prompts)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, feats)
    return feats


def state_inputs(
    sets: dict[str, list[RatedPrompt]], cache_dir: str | Path, encoder: str = DEFAULT_ENCODER,
    log: Callable[..., Any] = print,
) -> tuple[PromptInputs, TokenStates]:  # fmt: skip
    """The input table (features, mean pool, token counts) and the token states of every prompt of `sets`,
    row for row; the states come from the cache under `cache_dir` (encoded once)."""
    from router_model.lab.state_cache import cached_token_states

    prompts = distinct_prompts(sets)
    states = cached_token_states(prompts, cache_dir, encoder, log=log)
    inputs = PromptInputs(
        _features(prompts, cache_dir), states.mean_pooled().numpy(), states.mask.sum(1).numpy().astype(np.float64),
        {prompt_key(p): i for i, p in enumerate(prompts)},
    )  # fmt: skip
    return inputs, states


def advantage(model: MultiRouter, inputs: PromptInputs, states: TokenStates | None, rows: np.ndarray, pair: Pair,
              chunk: int = 1024) -> tuple[np.ndarray, str]:  # fmt: skip
    """The model's cloud advantage of input rows `rows` for `pair` (token states sliced in length-sorted chunks)."""
    if not model.needs_states:
        out = model.advantage_from_inputs(inputs.features[rows], inputs.pooled[rows], inputs.tokens[rows],
                                          pair.edge, pair.cloud)  # fmt: skip
        return out.advantage, out.head
    assert states is not None
    scores, head = np.zeros(len(rows)), "-"
    order = np.argsort(inputs.tokens[rows], kind="stable")
    for part in np.array_split(order, max(1, -(-len(rows) // chunk))):
        r = rows[part]
        out = model.advantage_from_inputs(inputs.features[r], None, inputs.tokens[r], pair.edge, pair.cloud,
                                          states=states.subset(r))  # fmt: skip
        scores[part], head = out.advantage, out.head
    return scores, head


def tower_fit(tower: str, inputs: PromptInputs, states: TokenStates, seed: int = 0) -> Fit:
    """How `routet2i-<tower>` is trained on a LODO fold's training sets (and then scores rows of a pair)."""
    from router_model.lab.multi_protocols import SHIPPED_FEATURES, fit_shipped

    def fit(train: dict[str, list[RatedPrompt]]) -> Scorer:
        if tower == "ridge":
            model = fit_shipped(train, inputs)
        else:
            config = MultiRouterConfig(tower=tower, feature_names=list(SHIPPED_FEATURES),
                                       embed_dim=int(inputs.pooled.shape[1]))  # fmt: skip
            model, _ = train_multi(train, inputs, config, seed=seed, states=states if tower == "moe" else None,
                                   **TOWER_TRAINING[tower])  # fmt: skip
        return lambda rows, pair: advantage(model, inputs, states, rows, pair)

    return fit

"""Load any router checkpoint as a prompt scorer: `score(prompts)` → PRŜ per prompt (the gateway's contract).

The paper's pair router (`model.RouteT2IRouter`) scores its own pair; a many-model checkpoint (`"kind": "multi"`)
is fixed to an (edge, cloud) pair of canonical model ids and serves PRŜ = σ(−cloud advantage).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from router_model.model_ids import DEFAULT_CLOUD_ID, DEFAULT_EDGE_ID
from router_model.multi_router import MultiRouter, PairScorer, checkpoint_kind


def load_scorer(
    directory: str | Path,
    *,
    edge_id: str = DEFAULT_EDGE_ID,
    cloud_id: str = DEFAULT_CLOUD_ID,
    device: str = "auto",
    encoder_dtype: str = "float32",
    models: Sequence[str] = (),
):
    """A `RouteT2IRouter` or a `PairScorer` for the checkpoint in `directory` (`edge_id`/`cloud_id`: multi only;
    `models`: the N arms' model ids, whose per-model quality a many-model checkpoint that knows them all scores)."""
    if checkpoint_kind(directory) == "multi":
        multi = MultiRouter.from_pretrained(
            directory, device="cpu" if device == "auto" else device, encoder_dtype=encoder_dtype
        )
        return multi.for_pair(edge_id, cloud_id, models)
    from router_model.model import RouteT2IRouter

    return RouteT2IRouter.from_pretrained(directory, device=device, encoder_dtype=encoder_dtype)


__all__ = ["PairScorer", "load_scorer"]

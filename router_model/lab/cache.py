"""On-disk cache of per-prompt inputs (features, mean-pooled encoder embedding, token count) for research runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from router_model.encoder import DEFAULT_ENCODER, TextEncoder
from router_model.features import prompt_features


def encode_pooled(
    prompts: Sequence[str], encoder: str = DEFAULT_ENCODER, batch_size: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """Mean-pooled last-layer states [N, d] and real-token counts [N] (prompts sorted by length for speed)."""
    enc = TextEncoder(encoder, device="cpu")
    order = np.argsort([len(p) for p in prompts])
    pooled = np.zeros((len(prompts), enc.hidden_size), dtype=np.float32)
    tokens = np.zeros(len(prompts), dtype=np.float32)
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            idx = order[i : i + batch_size]
            st = enc.forward_tokens(enc.tokenize([prompts[j] for j in idx]))
            pooled[idx] = st.mean_pooled().numpy()
            tokens[idx] = st.mask.sum(1).numpy()
    return pooled, tokens


def cached_inputs(prompts: Sequence[str], path: str | Path) -> dict[str, np.ndarray]:
    """{'features', 'pooled', 'tokens'} for `prompts` (in that order), computed once and stored in `path` (.npz)."""
    path = Path(path)
    if path.exists():
        data = dict(np.load(path, allow_pickle=False))
        if len(data["tokens"]) == len(prompts):
            return data
    feats = prompt_features(prompts)
    pooled, tokens = encode_pooled(prompts)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, features=feats, pooled=pooled, tokens=tokens)
    return {"features": feats, "pooled": pooled, "tokens": tokens}

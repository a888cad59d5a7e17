"""On-disk cache of encoder token states: each distinct prompt encoded once, stored trimmed and in float16.

A cache file holds the real tokens of every distinct prompt back to back ([total tokens, d], float16) and
each prompt's token count; reading it pads again to the longest prompt (float32, as `TextEncoder.encode`
returns). Its name is a digest of the prompts, the encoder's name, its maximum length and a stamp of
the encoder's files (size and modification time), so a changed prompt list or encoder never reads a
stale file. float16 keeps the states to about three significant digits: far below the noise of the
labels, and half the disk and load time of float32.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from router_model.encoder import DEFAULT_ENCODER, TextEncoder, TokenStates, resolve_encoder_path


def encoder_stamp(name: str) -> str:
    """Name, and size + mtime of every file of a local encoder directory (a hub id is its name alone)."""
    try:
        path = Path(resolve_encoder_path(name))
    except ImportError:
        return name
    if not path.is_dir():
        return name
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return name + "".join(f"|{p.relative_to(path)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


def states_file(cache_dir: str | Path, prompts: Sequence[str], encoder: str, max_length: int) -> Path:
    """Where the token states of `prompts` (distinct, in order) under this encoder are cached."""
    digest = hashlib.sha256("\n".join([encoder_stamp(encoder), str(max_length), *prompts]).encode()).hexdigest()
    return Path(cache_dir).expanduser() / f"states-{len(prompts)}-{digest[:20]}.npz"


def _pack(states: TokenStates) -> dict[str, np.ndarray]:
    lengths = states.mask.sum(dim=1)
    rows = states.states[states.mask].to(torch.float16).numpy()  # real tokens, row-major: prompt by prompt
    return {"tokens": rows, "lengths": lengths.numpy().astype(np.int32)}


def _unpack(tokens: np.ndarray, lengths: np.ndarray) -> TokenStates:
    n, width = len(lengths), tokens.shape[1]
    longest = max(int(lengths.max()), 1) if n else 1
    mask = torch.arange(longest).unsqueeze(0) < torch.as_tensor(lengths, dtype=torch.long).unsqueeze(1)
    states = torch.zeros(n, longest, width, dtype=torch.float32)
    states[mask] = torch.from_numpy(tokens).float()
    return TokenStates(states, mask)


def cached_token_states(
    prompts: Sequence[str],
    cache_dir: str | Path | None,
    encoder: str | TextEncoder = DEFAULT_ENCODER,
    log: Callable[..., Any] = print,
) -> TokenStates:
    """Token states of `prompts` (one row each, duplicates too), each distinct prompt encoded at most once.

    With `cache_dir` None nothing is read or written."""
    distinct = list(dict.fromkeys(prompts))
    row = {p: i for i, p in enumerate(distinct)}
    name = encoder.name if isinstance(encoder, TextEncoder) else encoder
    max_length = encoder.max_length if isinstance(encoder, TextEncoder) else 77
    path = states_file(cache_dir, distinct, name, max_length) if cache_dir is not None else None
    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as data:
            states = _unpack(data["tokens"], data["lengths"])
        log(f"token states of {len(distinct)} prompts read from {path}")
    else:
        enc = encoder if isinstance(encoder, TextEncoder) else TextEncoder(encoder)
        log(f"encoding {len(distinct)} distinct prompts once" + (f" (cached in {path})" if path else ""))
        states = enc.encode(distinct)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, **_pack(states))
            tmp.replace(path)
            states = _unpack(*_pack(states).values())  # what a re-run reads: the same values either way
    if len(distinct) == len(prompts):
        return states
    return states.subset([row[p] for p in prompts])

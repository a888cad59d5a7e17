"""Stand-ins for tests where generation is not the point: instant backends and a deterministic scorer.

Everything else stays real (uvicorn, httpx, the budget, Redis); these only answer at once, so thousands of
requests fit in seconds on two cores.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from backends.base import GenerationRequest, GenerationResult, png_bytes
from gateway.settings import Settings

_PIXEL = Image.new("RGB", (8, 8), (200, 30, 30))
_PNG = png_bytes(_PIXEL)


class InstantBackend:
    """An `ImageBackend` that answers at once (optionally after `delay_s`) and counts what it served."""

    def __init__(self, name: str, delay_s: float = 0.0):
        self.name, self.delay_s = name, delay_s
        self.calls = 0

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return GenerationResult(
            images=[_PIXEL] * request.n, seed=request.seed if request.seed is not None else 7, backend=self.name,
            model=f"instant-{self.name}", png=[_PNG] * request.n,
        )  # fmt: skip

    def ready(self) -> bool:
        return True

    def queue_depth(self) -> int:
        return 0

    async def aclose(self) -> None:
        return None


@dataclass
class _Scores:
    prs: np.ndarray
    per_metric: np.ndarray
    metrics: tuple[str, ...] = ("clip", "aesthetic")


class HashScorer:
    """A deterministic router: PRŜ uniform in [0, 1) from the prompt's SHA-256."""

    def score(self, prompts):
        prs = np.array([int.from_bytes(hashlib.sha256(p.encode()).digest()[:8], "big") / 2**64 for p in prompts])
        return _Scores(prs, np.stack([prs, prs], axis=1))


def standin_settings(tmp: Path, **overrides) -> Settings:
    values = {
        "router_device": "cpu", "state_file": str(tmp / "state.json"), "admin_token": "admin-secret", "rho": 0.3,
        "cloud_kind": "none", "cloud_retries": 0,
    }  # fmt: skip
    return Settings(**{**values, **overrides})


def real_prompts(n: int) -> list[str]:
    """The first `n` COCO captions of the shared data (a real prompt stream), or synthetic ones without it."""
    from bench.budget_replay import DATA_DIR

    path = DATA_DIR / "coco2014_val_captions_5k.tsv"
    if not path.exists():
        return [f"prompt number {i}" for i in range(n)]
    lines = path.read_text(encoding="utf-8").splitlines()[1 : n + 1]
    return [line.split("\t")[2] for line in lines]

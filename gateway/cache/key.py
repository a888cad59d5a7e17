"""The cache key of a request: what fully determines its images on one arm."""

from __future__ import annotations

import hashlib
import json

from backends.base import GenerationRequest

KEY_VERSION = 1  # bump when the canonical form changes: old entries then simply miss


def cache_key(request: GenerationRequest, arm: str, *, private: bool = False, default_steps: int | None = None) -> str:
    """SHA-256 (hex) of the canonical JSON of the request on `arm` (the backend and model that would make it).

    The prompt is kept exactly as sent (an exact cache: a changed character is another image). Steps the
    request leaves to the backend count as `default_steps` when the arm's default is known. `private`
    keeps private requests' entries apart from everyone else's, so a request can never tell from a hit
    that someone asked the same thing privately."""
    if request.seed is None:
        raise ValueError("only seeded requests have a cache key (without a seed a new image is wanted)")
    canonical = {
        "v": KEY_VERSION,
        "arm": arm,
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt or None,
        "width": request.width,
        "height": request.height,
        "n": request.n,
        "steps": request.num_inference_steps if request.num_inference_steps is not None else default_steps,
        "guidance": None if request.guidance_scale is None else float(request.guidance_scale),
        "seed": request.seed,
        "private": private,
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

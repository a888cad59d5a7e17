"""What a local diffusion pipeline can be asked to run: size, step, guidance and seed bounds, checked
before a request takes the device, so that a request the model cannot run is a clear `ValueError` (422)
and not a pipeline failure that looks like the backend is broken."""

from __future__ import annotations

import math
import random
from typing import Any

from backends.base import MAX_SEED, GenerationRequest, RequestRejected

MAX_SIDE = 4096
SIZE_MULTIPLE = 8


def draw_seed() -> int:
    """A fresh seed in [1, 2**32 - 2] (0 means "random" to some providers, 2**32 - 1 is out of their range)."""
    return random.SystemRandom().randint(1, MAX_SEED - 1)


def validate_request(request: GenerationRequest, *, multiple: int = SIZE_MULTIPLE, max_side: int = MAX_SIDE) -> None:
    """Raise `ValueError` naming the field and the fix when a request cannot be run by a local pipeline."""
    if not isinstance(request.prompt, str) or not request.prompt.strip():
        raise ValueError("prompt: must be a non-empty string")
    for name in ("width", "height"):
        value = getattr(request, name)
        if not isinstance(value, int) or value <= 0 or value > MAX_SIDE:
            raise ValueError(f"{name}: must be an integer in [{multiple}, {MAX_SIDE}], got {value!r}")
        if value > max_side:
            raise RequestRejected(f"{name}: this model generates at most {max_side} pixels a side, got {value}")
        if value % multiple:
            lower, upper = value - value % multiple, value - value % multiple + multiple
            raise ValueError(
                f"{name}: must be a multiple of {multiple} (diffusion latents are {multiple}x smaller), got {value}; "
                f"use {max(lower, multiple)} or {upper}"
            )
    if not isinstance(request.n, int) or request.n < 1:
        raise ValueError(f"n: must be a positive integer, got {request.n!r}")
    steps = request.num_inference_steps
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"num_inference_steps: must be a positive integer, got {steps!r}")
    guidance = request.guidance_scale
    if guidance is not None and (not isinstance(guidance, int | float) or not math.isfinite(guidance) or guidance < 0):
        raise ValueError(f"guidance_scale: must be a finite number >= 0, got {guidance!r}")
    if request.seed is not None and (not isinstance(request.seed, int) or not 0 <= request.seed <= MAX_SEED):
        raise ValueError(f"seed: must be an integer in [0, {MAX_SEED}], got {request.seed!r}")


def size_limits(pipeline: Any) -> tuple[int, int]:
    """(multiple, max_side) for a pipeline's width and height.

    Sides must be multiples of the VAE's downscale × the denoiser's patch size (and of 8): SD 2.1 8, SD3 16.
    An MMDiT's position embedding covers a fixed grid of patches, which caps the side (SD3.5: 192 × 2 × 8 =
    3072 pixels); a larger latent raises inside the denoising loop. UNets have no such cap.
    """
    scale = getattr(pipeline, "vae_scale_factor", None) or 1
    config = getattr(getattr(pipeline, "transformer", None), "config", None)
    patch = getattr(config, "patch_size", None) or 1
    span = getattr(config, "pos_embed_max_size", None) or 0
    stride = int(scale) * int(patch)
    multiple = math.lcm(SIZE_MULTIPLE, stride)
    max_side = min(MAX_SIDE, stride * int(span)) if span else MAX_SIDE
    return multiple, max_side

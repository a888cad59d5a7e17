"""Load any diffusers text-to-image pipeline from a path or hub id, on the right device and dtype."""

from __future__ import annotations

import json
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is float16 on CUDA and float32 on the CPU (half precision is slow or unsupported there)."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _absent_components(path: Path) -> dict[str, None]:
    """Components a saved pipeline records as [null, null] (e.g. SD3 without T5) must be passed as None."""
    index = path / "model_index.json"
    if not index.exists():
        return {}
    spec = json.loads(index.read_text())
    return {name: None for name, value in spec.items() if isinstance(value, list) and value == [None, None]}


def load_pipeline(name_or_path: str, device: str = "auto", dtype: str = "auto", pipeline_class: str | None = None):
    """`DiffusionPipeline.from_pretrained` (or the named class) moved to the device, progress bar off."""
    import diffusers

    dev = resolve_device(device)
    cls = getattr(diffusers, pipeline_class) if pipeline_class else diffusers.AutoPipelineForText2Image
    kwargs = _absent_components(Path(name_or_path)) if Path(name_or_path).is_dir() else {}
    pipe = cls.from_pretrained(name_or_path, torch_dtype=resolve_dtype(dtype, dev), **kwargs)
    pipe = pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    return pipe

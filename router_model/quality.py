"""Contrastive CLIP quality metrics: q(I, m) = σ(CLIP(I, m⁺) − CLIP(I, m⁻)).

CLIP(I, t) is the CLIP logit, logit_scale.exp() × cosine of the normalised projected embeddings, so
q is the softmax probability of m⁺ over the pair (m⁺, m⁻). The text pairs are data: the ten defaults
live in `quality_metrics.json` beside this module and a user file of the same shape replaces them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from router_model.encoder import pick_device

DEFAULT_METRICS_FILE = Path(__file__).with_name("quality_metrics.json")
_FIELDS = ("name", "positive", "negative")


class MetricsFileError(ValueError):
    """A quality-metrics file that cannot be used; the message names the file, the entry and the fix."""


@dataclass(frozen=True)
class QualityMetric:
    name: str
    positive: str
    negative: str


def _check_entry(path: Path, index: int, entry: Any) -> QualityMetric:
    where = f"{path}: entry {index}"
    if not isinstance(entry, dict):
        raise MetricsFileError(f"{where} is {type(entry).__name__}; each entry must be an object {_FIELDS}")
    missing = [f for f in _FIELDS if f not in entry]
    extra = sorted(set(entry) - set(_FIELDS))
    if missing or extra:
        raise MetricsFileError(
            f"{where} ({entry.get('name', '?')!r}): missing {missing or 'nothing'}, unknown {extra or 'nothing'}; "
            f"each entry has exactly the keys {list(_FIELDS)}"
        )
    for f in _FIELDS:
        if not isinstance(entry[f], str) or not entry[f].strip():
            raise MetricsFileError(f"{where} ({entry.get('name')!r}): {f!r} must be a non-empty string")
    if entry["positive"].strip() == entry["negative"].strip():
        raise MetricsFileError(f"{where} ({entry['name']!r}): positive and negative texts are the same")
    return QualityMetric(entry["name"].strip(), entry["positive"].strip(), entry["negative"].strip())


def load_metrics(path: str | Path | None = None) -> list[QualityMetric]:
    """The metric pairs of a JSON file (a list of {"name", "positive", "negative"}); None: the defaults."""
    path = Path(path) if path is not None else DEFAULT_METRICS_FILE
    if not path.is_file():
        raise MetricsFileError(f"{path}: no such metrics file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MetricsFileError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
    if not isinstance(data, list) or not data:
        raise MetricsFileError(f"{path}: must be a non-empty JSON list of {{'name', 'positive', 'negative'}} objects")
    metrics = [_check_entry(path, i, entry) for i, entry in enumerate(data, start=1)]
    seen: set[str] = set()
    for i, m in enumerate(metrics, start=1):
        if m.name in seen:
            raise MetricsFileError(f"{path}: entry {i}: metric name {m.name!r} is used twice; names must be unique")
        seen.add(m.name)
    return metrics


def _features(output: Any) -> torch.Tensor:
    """Projected embeddings: transformers 4.x returns a tensor, 5.x an output whose pooler_output is projected."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class QualityScorer:
    """Scores images on k contrastive metrics with any `transformers` CLIP checkpoint (path or hub id)."""

    def __init__(
        self, model: str, metrics_file: str | Path | None = None, device: str = "auto", batch_size: int = 16
    ) -> None:
        from transformers import AutoProcessor, CLIPModel

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.metrics = load_metrics(metrics_file)
        self.model_name = model
        self.device = pick_device(device)
        self.batch_size = batch_size
        self.processor = AutoProcessor.from_pretrained(model)
        self.model = CLIPModel.from_pretrained(model).to(self.device).eval()
        self.model.requires_grad_(False)
        with torch.inference_mode():
            self._logit_scale = self.model.logit_scale.exp().float()
            texts = [m.positive for m in self.metrics] + [m.negative for m in self.metrics]
            text = self._embed_texts(texts)
        k = len(self.metrics)
        # CLIP(I, m⁺) − CLIP(I, m⁻) = scale · ⟨î, t̂⁺ − t̂⁻⟩: one [p, k] matrix per scorer.
        self._contrast = (text[:k] - text[k:]).T.contiguous()

    @property
    def metric_names(self) -> list[str]:
        return [m.name for m in self.metrics]

    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        tokenizer = self.processor.tokenizer
        batch = tokenizer(
            texts, padding=True, truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt"
        )
        batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        emb = _features(self.model.get_text_features(**batch)).float()
        return emb / emb.norm(dim=-1, keepdim=True)

    def _embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.processor.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        pixel_values = pixels["pixel_values"].to(self.device, dtype=self.model.dtype)
        emb = _features(self.model.get_image_features(pixel_values=pixel_values)).float()
        return emb / emb.norm(dim=-1, keepdim=True)

    @torch.inference_mode()
    def score(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Q(I) for each image: an [n, k] float64 array in (0, 1), columns in `metric_names` order."""
        parts = [
            torch.sigmoid(
                (self._logit_scale * (self._embed_images(images[i : i + self.batch_size]) @ self._contrast)).double()
            )
            for i in range(0, len(images), self.batch_size)
        ]
        if not parts:
            return np.empty((0, len(self.metrics)), dtype=np.float64)
        return torch.cat(parts).cpu().numpy()

"""Image checks for verify-then-escalate: how well a generated image matches its prompt, as one number.

`ImageCheck` is the protocol (higher = better; the gateway escalates below a threshold in the same units).
`ClipImageCheck` is CLIP image–text cosine similarity through `transformers` (`CLIPModel` + `CLIPProcessor`
loaded with `from_pretrained` from a path or hub id): about 0.25–0.35 for a matching image with OpenAI's
CLIP ViT-L/14, under 0.2 for an unrelated one; a tiny random CLIP (demo/tiny.py) scores near 0.

Calls are blocking (a forward pass): the gateway runs them in a worker thread. torch and transformers are
imported when a `ClipImageCheck` is made, so a gateway without a check never loads them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from backends.logs import install_prompt_scrubber


@runtime_checkable
class ImageCheck(Protocol):
    def score(self, prompt: str, image: Image.Image) -> float:
        """How well `image` matches `prompt` (higher is better)."""
        ...


def score_images(check: ImageCheck, prompt: str, images: Sequence[Image.Image]) -> list[float]:
    """Every image's score: one batched call when the check has `score_batch`, else one call per image."""
    batch = getattr(check, "score_batch", None)
    if batch is not None:
        return [float(s) for s in batch(prompt, images)]
    return [float(check.score(prompt, image)) for image in images]


def _features(output: Any) -> Any:
    """Projected embeddings: transformers 4.x returns a tensor, 5.x an output whose pooler_output is projected."""
    import torch

    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipImageCheck:
    """CLIP cosine similarity between the prompt and each image. `lazy=True` loads on `load()` or first use."""

    def __init__(self, model: str, *, device: str = "auto", lazy: bool = False):
        from backends.loading import resolve_device

        self.model_name = model
        self.device = resolve_device(device)
        self.model: Any = None
        self.processor: Any = None
        self._load_lock = threading.Lock()
        self._lock = threading.Lock()  # one forward pass at a time: bounded memory, no thread fights on the CPU
        install_prompt_scrubber()
        if not lazy:
            self.load()

    def load(self) -> None:
        """Load the weights and processor (idempotent, thread-safe)."""
        with self._load_lock:
            if self.model is not None:
                return
            from transformers import CLIPModel, CLIPProcessor

            processor = CLIPProcessor.from_pretrained(self.model_name)
            model = CLIPModel.from_pretrained(self.model_name).to(self.device).eval()
            model.requires_grad_(False)
            self.processor, self.model = processor, model

    def ready(self) -> bool:
        return self.model is not None

    def score(self, prompt: str, image: Image.Image) -> float:
        return self.score_batch(prompt, [image])[0]

    def score_batch(self, prompt: str, images: Sequence[Image.Image]) -> list[float]:
        """Cosine similarity of the prompt (truncated to CLIP's context) with each image, in one forward pass."""
        import torch

        if not images:
            return []
        self.load()
        tokenizer = self.processor.tokenizer
        text = tokenizer(
            [prompt], padding=True, truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt"
        )
        text = {k: v.to(self.device) for k, v in text.items() if k in ("input_ids", "attention_mask")}
        pixels = self.processor.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        pixel_values = pixels["pixel_values"].to(self.device, dtype=self.model.dtype)
        with self._lock, torch.inference_mode():
            t = _features(self.model.get_text_features(**text)).float()
            i = _features(self.model.get_image_features(pixel_values=pixel_values)).float()
        t = t / t.norm(dim=-1, keepdim=True)
        i = i / i.norm(dim=-1, keepdim=True)
        return (i @ t.T).squeeze(-1).cpu().tolist()

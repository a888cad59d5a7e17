"""The router's frozen text encoder on ONNX Runtime: the same tokenizer and weights, one graph call.

The torch encoder spends a third of a single-prompt call in Python module dispatch; ONNX Runtime runs
the whole BERT graph in C++. The graph is exported once from the loaded `TextEncoder` (torch.onnx,
TorchScript exporter, dynamic batch and length) into a cache directory keyed by the encoder's files,
and optionally quantised (dynamic int8, `onnxruntime.quantization`). Only the encoder moves: the
router head stays in torch, fed the ONNX output without a copy (`torch.from_numpy`).

`onnxruntime` (and `onnx` for the export) are the optional extra `routet2i[onnx]`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from router_model.encoder import TextEncoder, TokenStates

RUNTIMES = ("torch", "onnx", "onnx-int8")


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def cache_dir() -> Path:
    """Where exported graphs are kept: $ROUTET2I_ONNX_CACHE, else $XDG_CACHE_HOME/routet2i-onnx."""
    if os.environ.get("ROUTET2I_ONNX_CACHE"):
        return Path(os.environ["ROUTET2I_ONNX_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "routet2i-onnx"


def _fingerprint(encoder: TextEncoder, int8: bool) -> str:
    """Changes with the encoder's weights (a hash over its parameters' bytes), torch's version and the variant."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"{torch.__version__}|{int8}|{encoder.max_length}".encode())
    for name, tensor in encoder.model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes()[:4096])
        digest.update(str(tuple(tensor.shape)).encode())
    return digest.hexdigest()


class _StatesOnly(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def export_onnx(encoder: TextEncoder, path: Path) -> Path:
    """Write the float32 encoder graph (input_ids, attention_mask → last_hidden_state) to `path`."""
    model = _StatesOnly(encoder.model.float().cpu()).eval()
    sample = encoder.tokenizer(["a photo of a cat on a mat"], return_tensors="pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    axes = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
            "states": {0: "batch", 1: "length"}}  # fmt: skip
    with torch.inference_mode():
        torch.onnx.export(
            model, (sample["input_ids"], sample["attention_mask"]), str(tmp),
            input_names=["input_ids", "attention_mask"], output_names=["states"], dynamic_axes=axes, opset_version=17,
            dynamo=False,
        )  # fmt: skip
    tmp.replace(path)
    return path


def quantize_int8(source: Path, path: Path) -> Path:
    """Dynamic int8 weights (per channel) for the MatMuls; activations stay float."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
    tmp.replace(path)
    return path


def onnx_model_path(encoder: TextEncoder, int8: bool = False, directory: Path | None = None) -> Path:
    """The cached graph for `encoder`, exported (and quantised) on first use."""
    directory = directory or cache_dir()
    fp32 = directory / f"encoder-{_fingerprint(encoder, False)}.onnx"
    if not fp32.exists():
        export_onnx(encoder, fp32)
    if not int8:
        return fp32
    quantised = directory / f"encoder-{_fingerprint(encoder, True)}-int8.onnx"
    if not quantised.exists():
        quantize_int8(fp32, quantised)
    return quantised


class OnnxTextEncoder:
    """Drop-in for `TextEncoder` (tokenize, forward_tokens, encode) running the graph on ONNX Runtime."""

    def __init__(self, encoder: TextEncoder, int8: bool = False, threads: int | None = None):
        import onnxruntime as ort

        self.name, self.tokenizer, self.max_length = encoder.name, encoder.tokenizer, encoder.max_length
        self.device = torch.device("cpu")
        self._hidden = encoder.hidden_size
        self.model_path = onnx_model_path(encoder, int8=int8)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One intra-op thread by default, like the torch encoder under OMP_NUM_THREADS=1: a single prompt is
        # too small to split, and the gateway's event loop needs the other core.
        options.intra_op_num_threads = threads or int(os.environ.get("OMP_NUM_THREADS", "1") or 1)
        options.inter_op_num_threads = 1
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if torch.cuda.is_available() else None
        available = set(ort.get_available_providers())
        providers = [p for p in (providers or ["CPUExecutionProvider"]) if p in available]
        self.session = ort.InferenceSession(str(self.model_path), options, providers=providers)

    @property
    def hidden_size(self) -> int:
        return self._hidden

    def tokenize(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        batch = self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=self.max_length, return_tensors="np",
            return_token_type_ids=False,
        )  # fmt: skip
        return {name: batch[name].astype(np.int64) for name in ("input_ids", "attention_mask")}

    def forward_tokens(self, batch: dict[str, np.ndarray]) -> TokenStates:
        (states,) = self.session.run(["states"], batch)
        return TokenStates(torch.from_numpy(states), torch.from_numpy(batch["attention_mask"]).bool())

    def encode(self, prompts: Sequence[str], batch_size: int = 64) -> TokenStates:
        parts = [
            self.forward_tokens(self.tokenize(prompts[i : i + batch_size])) for i in range(0, len(prompts), batch_size)
        ]
        if not parts:
            raise ValueError("no prompts to encode")
        length = max(p.states.shape[1] for p in parts)
        states = torch.cat([torch.nn.functional.pad(p.states, (0, 0, 0, length - p.states.shape[1])) for p in parts])
        mask = torch.cat([torch.nn.functional.pad(p.mask, (0, length - p.mask.shape[1])) for p in parts])
        return TokenStates(states, mask)


def use_runtime(router, runtime: str) -> None:
    """Swap `router`'s encoder for the named runtime ("torch" leaves it as is)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"router runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "torch":
        return
    if not onnx_available():
        raise RuntimeError(f"router_runtime={runtime} needs onnxruntime and onnx: pip install 'routet2i[onnx]'")
    router.attach_encoder(OnnxTextEncoder(router.encoder, int8=runtime == "onnx-int8"))

"""The whole router (tokenised prompt → encoder → head → PRŜ) as one ONNX Runtime graph call.

The torch router spends about a third of a single-prompt call in Python dispatch (BERT's modules, then
five ensemble members' einsums); ONNX Runtime runs the same graph in C++ in one call. The graph is
exported once from the loaded `RouteT2IRouter` (torch.onnx, TorchScript exporter, dynamic batch and
length) into a cache directory keyed by the weights, and optionally quantised (dynamic int8). On 5,000
COCO captions the fp32 graph's PRŜ match torch's to 2e-7 (docs/BENCHMARKS.md); int8 changes too many
decisions and is only a benchmark arm.

One export detail: the head picks `top = min(top_k, length)` tokens per expert, a Python int the tracer
would freeze, so inputs are padded to at least `top_k` tokens (padding is masked: same scores) and the
gate is traced with `top_k` fixed. `onnxruntime` and `onnx` are the optional extra `routet2i[onnx]`.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import types
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from router_model.model import RouterScores, RouteT2IRouter

RUNTIMES = ("torch", "onnx")  # what the gateway's router_runtime may name: the paths that keep ≥ 99% of decisions


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


def _fingerprint(router: RouteT2IRouter, int8: bool) -> str:
    """Changes with the head's and the encoder's weights, the config, torch's version and the variant."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"{torch.__version__}|{int8}|{router.config.to_dict()}".encode())
    for module in (router, router.encoder.model):
        for name, tensor in module.state_dict().items():
            digest.update(name.encode() + str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes()[:65536])
    return digest.hexdigest()


def _traceable_gate(self, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`RouteT2IRouter.gate` with `top_k` fixed and a tensor `scatter` source (what the ONNX exporter takes);
    the same result whenever there are at least `top_k` token positions (padded ones are masked out)."""
    real = mask.bool().unsqueeze(-1).expand(*mask.shape, self.config.num_experts)
    if not self.config.token_selection:
        weights = real.to(states.dtype)
        return weights / weights.sum(1, keepdim=True).clamp_min(1.0), real
    logits = states @ self.expert_embeddings.t() / math.sqrt(states.shape[-1])
    null = torch.zeros_like(logits[..., :1])
    affinity = torch.softmax(torch.cat([logits, null], dim=-1), dim=-1)[..., :-1].masked_fill(~real, 0.0)
    index = affinity.masked_fill(~real, -1.0).topk(self.config.top_k, dim=1).indices
    selected = torch.zeros_like(real).scatter(1, index, torch.ones_like(index, dtype=torch.bool)) & real
    weights = affinity * selected
    return weights / weights.sum(1, keepdim=True).clamp_min(1e-12), selected


class _Graph(torch.nn.Module):
    """input_ids, attention_mask → (D̂ [B, k], PRŜ [B]): the encoder and the head in one module."""

    def __init__(self, router: RouteT2IRouter):
        super().__init__()
        self.router = copy.deepcopy(router).float().cpu().eval()  # copies: the live router keeps its dtype/device
        self.encoder = copy.deepcopy(router.encoder.model).float().cpu().eval()
        for head in self.router.members if self.router.members is not None else [self.router]:
            head.gate = types.MethodType(_traceable_gate, head)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.router(states, attention_mask.bool(), features)


def export_onnx(router: RouteT2IRouter, path: Path) -> Path:
    """Write the float32 router graph (input_ids, attention_mask[, features] → d_hat, prs) to `path`; a router
    with a prior takes its text features (`prior.text_features`) as a third input."""
    text = ["a photo of a cat sitting on a mat by the window"]
    sample = router.encoder.tokenizer(text, return_tensors="pt")
    ids, mask = _pad(sample["input_ids"].numpy(), sample["attention_mask"].numpy(), router.config.top_k)
    inputs: tuple[torch.Tensor, ...] = (torch.from_numpy(ids), torch.from_numpy(mask))
    names = ["input_ids", "attention_mask"]
    if router.prior is not None:
        inputs += (torch.from_numpy(router.prior.text_features(text)),)
        names.append("features")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    axes = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
            "features": {0: "batch"}, "d_hat": {0: "batch"}, "prs": {0: "batch"}}  # fmt: skip
    import warnings

    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints: fixed by padding to top_k
        torch.onnx.export(
            _Graph(router), inputs, str(tmp),
            input_names=names, output_names=["d_hat", "prs"],
            dynamic_axes={k: axes[k] for k in [*names, "d_hat", "prs"]},
            opset_version=17, dynamo=False,
        )  # fmt: skip
    tmp.replace(path)
    return path


def quantize_int8(source: Path, path: Path) -> Path:
    """Dynamic int8 weights (per channel) for the MatMuls; activations stay float (a benchmark arm only)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
    tmp.replace(path)
    return path


def onnx_model_path(router: RouteT2IRouter, int8: bool = False, directory: Path | None = None) -> Path:
    """The cached graph for `router`, exported (and quantised) on first use."""
    directory = directory or cache_dir()
    fp32 = directory / f"router-{_fingerprint(router, False)}.onnx"
    if not fp32.exists():
        export_onnx(router, fp32)
    if not int8:
        return fp32
    quantised = directory / f"router-{_fingerprint(router, True)}-int8.onnx"
    if not quantised.exists():
        quantize_int8(fp32, quantised)
    return quantised


def _pad(ids: np.ndarray, mask: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """int64 inputs padded (id 0, mask 0) to at least `length` tokens."""
    ids, mask = ids.astype(np.int64, copy=False), mask.astype(np.int64, copy=False)
    if ids.shape[1] < length:
        width = ((0, 0), (0, length - ids.shape[1]))
        ids, mask = np.pad(ids, width), np.pad(mask, width)
    return ids, mask


class OnnxRouter:
    """A `RouteT2IRouter` stand-in for scoring prompts (`score`), running the exported graph.

    CUDA when onnxruntime-gpu and a GPU are present, else the CPU with `threads` intra-op threads (default
    $OMP_NUM_THREADS or 1: one prompt is too small to split, and the gateway's event loop needs a core)."""

    def __init__(self, router: RouteT2IRouter, int8: bool = False, threads: int | None = None):
        import onnxruntime as ort

        self.config = router.config
        self.prior = router.prior
        self.tokenizer, self.max_length = router.encoder.tokenizer, router.encoder.max_length
        self.model_path = onnx_model_path(router, int8=int8)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or int(os.environ.get("OMP_NUM_THREADS") or 1)
        options.inter_op_num_threads = 1
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if torch.cuda.is_available() else []
        providers = [p for p in wanted if p in ort.get_available_providers()] or ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(self.model_path), options, providers=providers)

    def score(self, prompts: Sequence[str], batch_size: int = 64) -> RouterScores:
        from router_model.model import RouterScores

        if isinstance(prompts, str):
            raise TypeError("score() takes a sequence of prompts, not a single string")
        d_parts, p_parts = [], []
        for start in range(0, len(prompts), batch_size):
            batch = self.tokenizer(
                list(prompts[start : start + batch_size]), padding=True, truncation=True, max_length=self.max_length,
                return_tensors="np", return_token_type_ids=False,
            )  # fmt: skip
            ids, mask = _pad(batch["input_ids"], batch["attention_mask"], self.config.top_k)
            feed = {"input_ids": ids, "attention_mask": mask}
            if self.prior is not None:
                feed["features"] = self.prior.text_features(prompts[start : start + batch_size])
            d_hat, prs = self.session.run(["d_hat", "prs"], feed)
            d_parts.append(d_hat)
            p_parts.append(prs)
        if not p_parts:
            return RouterScores(np.zeros(0), np.zeros((0, self.config.num_experts)), self.config.head_names)
        return RouterScores(np.concatenate(p_parts), np.concatenate(d_parts), self.config.head_names)


def scorer_for(router: RouteT2IRouter, runtime: str):
    """What scores prompts for the named runtime: the router itself ("torch") or its ONNX graph ("onnx")."""
    if runtime not in RUNTIMES:
        raise ValueError(f"router runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "torch":
        return router
    if not onnx_available():
        raise RuntimeError(f"router_runtime={runtime} needs onnxruntime and onnx: pip install 'routet2i[onnx]'")
    return OnnxRouter(router)

"""The whole router (tokenised prompt → encoder → head → PRŜ) as one ONNX Runtime graph call.

The torch router spends about a third of a single-prompt call in Python dispatch (BERT's modules, then
five ensemble members' einsums); ONNX Runtime runs the same graph in C++ in one call. The graph is
exported once from the loaded `RouteT2IRouter` (torch.onnx, TorchScript exporter, dynamic batch and
length) into a cache directory keyed by the weights, and optionally quantised. The ensemble's members are
exported as one head (`_MergedHead`: ONNX Runtime pays per node, and a single prompt pays mostly that). On
5,000 COCO captions the fp32 graph's PRŜ match torch's to 2e-7 (docs/BENCHMARKS.md). Three int8 variants:
- "int8-dynamic": `quantize_dynamic` of the whole graph (per-channel int8 weights, one scale per activation
  tensor, the head's gate included) changes about 3% of decisions: only a benchmark arm;
- "int8-blockwise": every MatMul weight of the encoder as 8-bit blocks of 32 along K with their own scale
  (ONNX Runtime's `MatMulNBits`, `accuracy_level` 4: int8 compute with activations also quantised in blocks
  of 32), so an outlier costs precision only in its block: 99.8% of decisions, but slower than dynamic int8;
- "int8-mixed" (`router_runtime: onnx-int8`): dynamic int8 for the encoder's MatMuls with K ≤ N, blockwise
  for its FFN down-projections (`quantize_mixed_int8`), the head float: ≥ 99% of decisions and about 2× faster
  than the fp32 graph on one prompt on CPUs with int8 dot products (AVX-512 VNNI / AVX-VNNI), see
  docs/BENCHMARKS.md.

One export detail: the head picks `top = min(top_k, length)` tokens per expert, a Python int the tracer
would freeze, so inputs are padded to at least `top_k` tokens (padding is masked: same scores) and the
gate is traced with `top_k` fixed. `onnxruntime` and `onnx` are the optional extra `routet2i[onnx]`.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from router_model.prior import TOKENS

if TYPE_CHECKING:
    from router_model.model import RouterScores, RouteT2IRouter

RUNTIMES = ("torch", "onnx", "onnx-int8")  # the gateway's router_runtime: the paths that keep ≥ 99% of decisions
VARIANTS = ("fp32", "int8-dynamic", "int8-blockwise", "int8-mixed")  # graphs OnnxRouter can run
RUNTIME_VARIANT = {"onnx": "fp32", "onnx-int8": "int8-mixed"}
WEIGHT_BLOCK = 32  # K-block of the blockwise int8 weights (16 agrees no better on COCO, 128 only just: 99.00%)
# Narrower weights stay float: MatMulNBits costs more than the float MatMul on them (the gate's expert embeddings,
# N = 1: five of them took about a third of the int8 graph's single-prompt time, docs/BENCHMARKS.md).
MIN_COLUMNS = 16
FLOAT_SCOPE = "/head/"  # nodes of the exported head stay float: its gate ranks tokens, small errors reorder them
GRAPH_VERSION = 3  # of the exported graph's layout (3: the ensemble's members merged into one head, folded)


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


def _fingerprint(router: RouteT2IRouter, variant: str) -> str:
    """Changes with the head's and the encoder's weights, the config, torch's version and the variant."""
    digest = hashlib.blake2b(digest_size=12)
    salt = {"fp32": False, "int8-dynamic": True}.get(variant, f"{variant}/{WEIGHT_BLOCK}/{MIN_COLUMNS}")
    digest.update(f"{torch.__version__}|{GRAPH_VERSION}|{salt}|{router.config.to_dict()}".encode())
    for module in (router, router.encoder.model):
        for name, tensor in module.state_dict().items():
            digest.update(name.encode() + str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes()[:65536])
    return digest.hexdigest()


class _MergedHead(torch.nn.Module):
    """The router's head (all ensemble members at once) as one traceable module: (states, mask, features) →
    (D̂ [B, k], PRŜ [B]), the arithmetic of `RouteT2IRouter.forward` in eval mode rearranged into few graph nodes
    (ONNX Runtime's per-node cost is what a single prompt pays most for once the encoder is int8):
    - the layer norm is computed once without its affine; each member's affine (g, b) is linear, so it is folded
      into the weights that follow: every member's gate logits (T Eᵀ/√d) and dual-gate projections (T (P⁺ − P⁻))
      are one MatMul of the normed states with a [d, m·k + m·k·l] weight plus a bias;
    - the members' low-rank → hidden maps S_i are one MatMul with their block-diagonal;
    - the prior's logits (shared by the members) are computed once.
    The top-k of the gate is traced with `top_k` fixed, the same result whenever there are at least `top_k` token
    positions (inputs are padded to that; padding is masked out)."""

    def __init__(self, router: RouteT2IRouter):
        super().__init__()
        members = list(router.members) if router.members is not None else [router]
        self.config, self.prior = members[0].config, members[0].prior
        self.eps, self.members = members[0].norm.eps, len(members)
        d = int(self.config.input_dim)

        def stack(get) -> torch.Tensor:
            return torch.stack([get(m).detach().double().cpu() for m in members])  # folded in float64, stored fp32

        gain, shift = stack(lambda m: m.norm.weight), stack(lambda m: m.norm.bias)  # [m, d]
        proj = stack(lambda m: m.proj_pos - m.proj_neg if self.config.dual_gate else m.proj_pos)  # [m, k, d, l]
        weight = (gain[:, None, :, None] * proj).permute(2, 0, 1, 3).reshape(d, -1)  # [d, m·k·l]
        bias = torch.einsum("md,mkdl->mkl", shift, proj).reshape(-1)
        if self.config.token_selection:
            experts = stack(lambda m: m.expert_embeddings) / math.sqrt(d)  # [m, k, d]
            weight = torch.cat([(gain[:, None, :] * experts).permute(2, 0, 1).reshape(d, -1), weight], 1)
            bias = torch.cat([torch.einsum("md,mkd->mk", shift, experts).reshape(-1), bias])
        self.register_buffer("weight", weight.float())
        self.register_buffer("bias", bias.float())
        scoring = stack(lambda m: m.scoring)  # [m, k, l, h]
        self.register_buffer("scoring", torch.block_diag(*scoring.reshape(-1, *scoring.shape[2:])).float())
        self.register_buffer("scoring_bias", stack(lambda m: m.scoring_bias).reshape(-1).float())  # [m·k·h]
        self.register_buffer("head_weight", stack(lambda m: m.head_weight).float())  # [m, k, h]
        self.register_buffer("head_bias", stack(lambda m: m.head_bias).float())  # [m, k]
        self.register_buffer("metric_weights", router.metric_weights.detach().float().cpu().clone())
        if self.prior is not None:
            names = ("prior_mean", "prior_scale", "prior_weight", "prior_bias")
            for name, tensor in zip(names, self.prior._tensors, strict=True):
                self.register_buffer(name, tensor.clone())

    def forward(
        self, states: torch.Tensor, mask: torch.Tensor, features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m, k, d = self.members, self.config.num_experts, int(self.config.input_dim)
        mask = mask.bool()
        x = torch.nn.functional.layer_norm(states.masked_fill(~mask.unsqueeze(-1), 0.0), (d,), eps=self.eps)
        y = x @ self.weight + self.bias  # [B, n, (m·k gate logits,) m·k·l projections]
        real = mask[:, :, None, None].expand(*mask.shape, m, k)
        if self.config.token_selection:
            logits = y[..., : m * k].reshape(y.shape[0], y.shape[1], m, k)  # (unflatten would trace batch 1)
            null = torch.zeros_like(logits[..., :1])
            affinity = torch.softmax(torch.cat([logits, null], dim=-1), dim=-1)[..., :-1].masked_fill(~real, 0.0)
            index = affinity.masked_fill(~real, -1.0).topk(self.config.top_k, dim=1).indices
            selected = torch.zeros_like(real).scatter(1, index, torch.ones_like(index, dtype=torch.bool)) & real
            weights = affinity * selected
            weights = weights / weights.sum(1, keepdim=True).clamp_min(1e-12)
            y = y[..., m * k :]
        else:
            weights = real.to(x.dtype)
            weights = weights / weights.sum(1, keepdim=True).clamp_min(1.0)
        tokens = torch.sigmoid(y @ self.scoring + self.scoring_bias).reshape(y.shape[0], y.shape[1], m, k, -1)
        pooled = (weights.unsqueeze(-1) * tokens).sum(1)  # [B, m, k, h]
        logits = (pooled * self.head_weight).sum(-1) + self.head_bias  # [B, m, k]
        if self.prior is not None:
            columns = [features.to(torch.float32)]
            if TOKENS in self.prior.features:
                columns.append(torch.log1p(mask.to(torch.float32).sum(1, keepdim=True)))
            prior = ((torch.cat(columns, 1) - self.prior_mean) / self.prior_scale) @ self.prior_weight.t()
            logits = (prior + self.prior_bias).unsqueeze(1) + self.config.residual_scale * logits
        d_hat = torch.sigmoid(logits).mean(1)
        return d_hat, d_hat @ self.metric_weights


class _Graph(torch.nn.Module):
    """input_ids, attention_mask → (D̂ [B, k], PRŜ [B]): the encoder and the head in one module."""

    def __init__(self, router: RouteT2IRouter):
        super().__init__()
        self.head = _MergedHead(router).eval()
        self.encoder = copy.deepcopy(router.encoder.model).float().cpu().eval()  # a copy: the live one keeps its dtype

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(states, attention_mask.bool(), features)


def export_onnx(router: RouteT2IRouter, path: Path, graph: torch.nn.Module | None = None) -> Path:
    """Write the float32 router graph (input_ids, attention_mask[, features] → d_hat, prs) to `path`; a router
    with a prior takes its text features (`prior.text_features`) as a third input. `graph`: another module with
    that signature to export (default `_Graph(router)`; the benchmark's reference layouts)."""
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
            graph if graph is not None else _Graph(router), inputs, str(tmp),
            input_names=names, output_names=["d_hat", "prs"],
            dynamic_axes={k: axes[k] for k in [*names, "d_hat", "prs"]},
            opset_version=17, dynamo=False,
        )  # fmt: skip
    tmp.replace(path)
    return path


def quantize_int8(source: Path, path: Path) -> Path:
    """Dynamic int8 weights (per channel) for the MatMuls, activations quantised per tensor (a benchmark arm only)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
    tmp.replace(path)
    return path


def block_int8(weight: np.ndarray, block_size: int = WEIGHT_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """A [K, N] float weight as `MatMulNBits` (bits 8, symmetric) stores it: uint8 [N, K/block, block] (q + 128)
    and float32 scales [N, K/block], each block's scale = its largest-magnitude value / −128 (ONNX Runtime's own
    quantiser's rule; K zero-padded to whole blocks)."""
    k, n = weight.shape
    blocks = -(-k // block_size)
    padded = np.zeros((blocks * block_size, n), dtype=np.float32)
    padded[:k] = weight
    grouped = padded.T.reshape(n, blocks, block_size)
    peak = np.take_along_axis(grouped, np.abs(grouped).argmax(-1)[..., None], -1)[..., 0]
    scales = (peak / -128.0).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = np.where(scales != 0, 1.0 / scales, 0.0).astype(np.float32)
    quantised = np.clip(np.rint(grouped * inverse[..., None]), -128, 127) + 128
    return quantised.astype(np.uint8), scales


def quantize_blockwise_int8(source: Path, path: Path, block_size: int = WEIGHT_BLOCK) -> Path:
    """Every MatMul with a 2-D constant weight of at least MIN_COLUMNS columns outside the head (the encoder's) →
    `MatMulNBits` (8 bits, blocks of `block_size`, accuracy_level 4); the rest of the graph is unchanged."""
    import onnx
    from onnx import helper, numpy_helper

    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"MatMulNBits takes power-of-two blocks of at least 16, got {block_size}")
    FLOAT = onnx.TensorProto.FLOAT  # noqa: N806
    model = onnx.load(str(source))
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    nodes, dropped, added = [], set(), []
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if (
            weight is None or len(weight.dims) != 2 or weight.dims[1] < MIN_COLUMNS or uses[weight.name] != 1
            or weight.data_type != FLOAT or node.name.startswith(FLOAT_SCOPE)
        ):  # fmt: skip
            nodes.append(node)
            continue
        array = numpy_helper.to_array(weight)
        packed, scales = block_int8(array, block_size)
        added += [numpy_helper.from_array(packed, f"{weight.name}_Q8")]
        added += [numpy_helper.from_array(scales, f"{weight.name}_scales")]
        dropped.add(weight.name)
        nodes.append(helper.make_node(
            "MatMulNBits", [node.input[0], f"{weight.name}_Q8", f"{weight.name}_scales"], list(node.output),
            name=f"{node.name}_Q8", domain="com.microsoft", K=array.shape[0], N=array.shape[1], bits=8,
            block_size=block_size, accuracy_level=4,
        ))  # fmt: skip
    kept = [t for t in graph.initializer if t.name not in dropped]
    del graph.node[:], graph.initializer[:]
    graph.node.extend(nodes)
    graph.initializer.extend(kept + added)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return path


def quantize_mixed_int8(source: Path, path: Path, block_size: int = WEIGHT_BLOCK) -> Path:
    """Dynamic int8 (`quantize_dynamic`: per-channel weights, one scale per activation tensor, ONNX Runtime's fused
    DynamicQuantizeMatMul) for the MatMuls whose constant weight is at least as wide as it is deep (K ≤ N: the
    attention's projections and the FFN's up-projection), blockwise int8 (`quantize_blockwise_int8`) for the FFN's
    down-projections (K > N), whose input, the GELU's output, has outliers one scale per tensor cannot hold, and
    float for the rest (the head, narrow weights). On 5,000 COCO captions dynamic int8 everywhere keeps 98.8% of
    decisions, this 99.5% (docs/BENCHMARKS.md)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source)).graph
    weights = {t.name: t for t in graph.initializer}
    dynamic = set()
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        wide = weight is not None and len(weight.dims) == 2 and MIN_COLUMNS <= weight.dims[1] >= weight.dims[0]
        if wide and not node.name.startswith(FLOAT_SCOPE):
            dynamic.add(node.name)
    tmp = path.with_suffix(f".{os.getpid()}.dynamic.tmp")
    excluded = [n.name for n in graph.node if n.name not in dynamic]
    quantize_dynamic(
        str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"],
        nodes_to_exclude=excluded, extra_options={"MatMulConstBOnly": True},
    )  # fmt: skip
    try:
        return quantize_blockwise_int8(tmp, path, block_size)
    finally:
        tmp.unlink(missing_ok=True)


def onnx_model_path(router: RouteT2IRouter, variant: str = "fp32", directory: Path | None = None) -> Path:
    """The cached graph of `variant` (one of VARIANTS) for `router`, exported (and quantised) on first use."""
    if variant not in VARIANTS:
        raise ValueError(f"ONNX variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    directory = directory or cache_dir()
    fp32 = directory / f"router-{_fingerprint(router, 'fp32')}.onnx"
    if not fp32.exists():
        export_onnx(router, fp32)
    if variant == "fp32":
        return fp32
    suffix = {"int8-dynamic": "int8", "int8-blockwise": "int8-block", "int8-mixed": "int8-mixed"}[variant]
    quantised = directory / f"router-{_fingerprint(router, variant)}-{suffix}.onnx"
    if not quantised.exists():
        quantise = {"int8-dynamic": quantize_int8, "int8-blockwise": quantize_blockwise_int8}
        quantise.get(variant, quantize_mixed_int8)(fp32, quantised)
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

    def __init__(
        self, router: RouteT2IRouter, variant: str = "fp32", threads: int | None = None, model_path: Path | None = None
    ):
        """`model_path`: run this graph (same inputs and outputs) instead of the cached one of `variant`."""
        import onnxruntime as ort

        self.config, self.variant = router.config, variant
        self.prior = router.prior
        self.tokenizer, self.max_length = router.encoder.tokenizer, router.encoder.max_length
        self.model_path = model_path or onnx_model_path(router, variant)
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
    """What scores prompts for the named runtime: the router itself ("torch") or its ONNX graph ("onnx": float32,
    "onnx-int8": blockwise int8 weights). A router scored by its prior alone (γ = 0) skips the encoder and the
    tower on every runtime (`prior_scorer`: the same scores)."""
    from router_model.prior_scorer import PriorScorer, scores_with_prior_only

    if runtime not in RUNTIMES:
        raise ValueError(f"router runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if scores_with_prior_only(router):
        return PriorScorer(router)
    if runtime == "torch":
        return router
    if not onnx_available():
        raise RuntimeError(f"router_runtime={runtime} needs onnxruntime and onnx: pip install 'routet2i[onnx]'")
    return OnnxRouter(router, RUNTIME_VARIANT[runtime])

"""A router over many models: prompt features + sentence embedding → per-model quality, any pair's gap.

IRT-style (cf. IRT-Router, ZOOTER): a text tower maps a prompt's inputs x (cheap features of
`router_model.features` and the frozen encoder's mean-pooled embedding, both standardised with
training statistics) to θ(p) ∈ R^r; each known model m has an ability vector a_m, and

    quality(p, m, d) ≈ b_{dataset,d,m} + <θ(p), δ + a_m>          (δ: shared prompt difficulty)

so the cloud advantage of a known pair is <θ(p), a_cloud − a_edge> (the biases cancel within a prompt).
For a model it does not know, a generic gap head g, trained on every training pair oriented better −
worse, gives <θ(p), g>. Optionally (`length_blend` > 0) the score adds the z-scored log token count:
the prompt-length heuristic that wins on unseen prompts, with the learned part on the same scale.

Towers (`MultiRouterConfig.tower`): "linear" or "mlp" on [standardised cheap features, mean-pooled
encoder states]; "moe": the paper's dual-gated token-selection mixture of experts (`router_model.moe`)
over the encoder's token states, its pooled expert vectors [k·h] concatenated with the standardised cheap
features before the last linear map to θ(p) (switches `token_selection`, `dual_gate` as in the paper).

A checkpoint is `config.json` + `model.safetensors` (the tower, a_m, δ, g, θ covariance); the encoder
is referenced by name. Runtime code only: training lives in `router_model.lab.train_multi`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from router_model.encoder import DEFAULT_ENCODER, TokenStates
from router_model.features import FEATURE_NAMES, prompt_features
from router_model.model_ids import canonical_id
from router_model.moe import MoESpec, TokenMoE

TOWERS = ("linear", "mlp", "moe")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def checkpoint_kind(directory: str | Path) -> str:
    """ "multi" for a `MultiRouter` checkpoint, "paper" for the paper's single-pair router (no `kind`)."""
    path = Path(directory) / CONFIG_NAME
    if not path.exists():
        raise FileNotFoundError(f"router checkpoint {directory}: no {CONFIG_NAME}")
    return "multi" if json.loads(path.read_text()).get("kind") == "multi" else "paper"


@dataclass
class MultiRouterConfig:
    models: list[str] = field(default_factory=list)  # canonical ids with an ability vector
    feature_names: list[str] = field(default_factory=lambda: list(FEATURE_NAMES))
    use_embedding: bool = True
    encoder: str = DEFAULT_ENCODER
    embed_dim: int = 384
    tower: str = "linear"  # "linear", "mlp" or "moe" (token states through the paper's MoE)
    rank: int = 16
    hidden: int = 64
    length_blend: float = 0.0  # weight of z(log tokens) added to the z-scored learned score
    x_mean: list[float] = field(default_factory=list)  # standardisation of the tower's input
    x_std: list[float] = field(default_factory=list)
    log_tokens_mean: float = 0.0
    log_tokens_std: float = 1.0
    data: dict = field(default_factory=dict)  # what it was trained on (model card material)
    head: str = "irt"  # how the weights were fitted ("irt", or "ridge(...)": generic head only)
    # the "moe" tower (router_model.moe): experts, tokens kept per expert, projection rank, pooled width per expert
    moe_experts: int = 4
    top_k: int = 8
    low_rank: int = 8
    moe_hidden: int = 16
    token_selection: bool = True
    dual_gate: bool = True
    dropout: float = 0.1

    @property
    def input_dim(self) -> int:
        """Width of the standardised input (the "moe" tower reads the encoder through its token states instead)."""
        pooled = self.use_embedding and self.tower != "moe"
        return len(self.feature_names) + (self.embed_dim if pooled else 0)

    def moe_spec(self) -> MoESpec:
        return MoESpec(
            experts=self.moe_experts, dim=self.embed_dim, top_k=self.top_k, low_rank=self.low_rank,
            hidden=self.moe_hidden, token_selection=self.token_selection, dual_gate=self.dual_gate,
            dropout=self.dropout,
        )  # fmt: skip


@dataclass
class MultiScores:
    advantage: np.ndarray  # higher → send to the cloud first
    head: str  # "pair" (both models known) or "generic" (edge-vs-cloud gap)
    edge_id: str
    cloud_id: str
    # per-model relative quality <θ(p), a_m − ā> for each of the `models` asked for, when the router knows them all
    quality: dict[str, np.ndarray] | None = None


class MultiRouter(nn.Module):
    def __init__(self, config: MultiRouterConfig):
        super().__init__()
        self.config = config
        r, d_in = config.rank, config.input_dim
        self.moe: TokenMoE | None = None
        if config.tower == "moe":
            self.moe = TokenMoE(config.moe_spec())
            self.tower = nn.Sequential(nn.Linear(config.moe_experts * config.moe_hidden + d_in, r))
        elif config.tower == "mlp":
            self.tower = nn.Sequential(
                nn.Linear(d_in, config.hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(config.hidden, r)
            )
        elif config.tower == "linear":
            self.tower = nn.Sequential(nn.Linear(d_in, r))
        else:
            raise ValueError(f"tower must be one of {', '.join(TOWERS)}, got {config.tower!r}")
        self.ability = nn.Parameter(torch.zeros(len(config.models), r))
        self.difficulty = nn.Parameter(torch.zeros(r))
        self.generic = nn.Parameter(torch.zeros(r))
        self.register_buffer("x_mean", torch.tensor(config.x_mean or [0.0] * d_in, dtype=torch.float32))
        self.register_buffer("x_std", torch.tensor(config.x_std or [1.0] * d_in, dtype=torch.float32))
        self.register_buffer("theta_cov", torch.eye(r))
        self._index = {m: i for i, m in enumerate(config.models)}
        self._encoder = None
        self.encoder_device, self.encoder_dtype = "cpu", "float32"

    # ------------------------------------------------------------ inputs

    def inputs(self, features: np.ndarray, pooled: np.ndarray | None) -> torch.Tensor:
        """Tower input; `features` has the config's columns, or all of FEATURE_NAMES (then they are selected)."""
        names = self.config.feature_names
        if features.shape[1] == len(FEATURE_NAMES) and len(names) != len(FEATURE_NAMES):
            features = features[:, [FEATURE_NAMES.index(n) for n in names]]
        parts = [torch.as_tensor(features, dtype=torch.float32)]
        if self.config.use_embedding and self.moe is None:
            if pooled is None:
                raise ValueError("this router needs the encoder's mean-pooled embedding")
            parts.append(torch.as_tensor(pooled, dtype=torch.float32))
        return torch.cat(parts, dim=1)

    @property
    def needs_states(self) -> bool:
        """True for the "moe" tower: θ(p) reads the encoder's token states, not the mean-pooled embedding."""
        return self.moe is not None

    def theta(self, x: torch.Tensor, states: TokenStates | None = None, piece: int = 256) -> torch.Tensor:
        """θ(p) [B, r] of tower inputs `x` (and, for the "moe" tower, the prompts' token states)."""
        z = (x - self.x_mean) / self.x_std
        if self.moe is None:
            return self.tower(z)
        if states is None or len(states) != len(x):
            raise ValueError("the 'moe' tower needs the encoder's token states of the same prompts")
        return self.tower(torch.cat([self.expert_vectors(states, piece), z], dim=1))

    def expert_vectors(self, states: TokenStates, piece: int = 256) -> torch.Tensor:
        """The MoE's pooled expert outputs, flattened [B, k·h]; computed in length-sorted pieces of `piece`
        prompts, each padded only to its own longest prompt (a prompt's output ignores padding)."""
        assert self.moe is not None
        if len(states) <= piece:
            return self.moe.pool(states.states, states.mask).flatten(1)
        lengths = states.mask.sum(dim=1)
        order = torch.argsort(lengths, stable=True)
        parts = []
        for chunk in order.split(piece):
            width = max(int(lengths[chunk].max()), 1)
            parts.append(self.moe.pool(states.states[chunk, :width], states.mask[chunk, :width]).flatten(1))
        return torch.cat(parts)[torch.argsort(order)]

    def knows(self, model_id: str) -> bool:
        return model_id in self._index

    def direction(self, edge_id: str, cloud_id: str) -> tuple[torch.Tensor, str]:
        if self.knows(edge_id) and self.knows(cloud_id) and edge_id != cloud_id:
            return self.ability[self._index[cloud_id]] - self.ability[self._index[edge_id]], "pair"
        return self.generic, "generic"

    def model_quality(self, theta: torch.Tensor, models: Sequence[str]) -> dict[str, np.ndarray] | None:
        """<θ(p), a_m − ā> per model (ā: the mean ability of the known models; the shared difficulty and the
        dataset biases cancel in comparisons across models), or None unless every model is known."""
        if not models or not all(self.knows(m) for m in models):
            return None
        centred = self.ability - self.ability.mean(0, keepdim=True)
        return {m: (theta @ centred[self._index[m]]).double().numpy() for m in models}

    @torch.no_grad()
    def advantage_from_inputs(
        self,
        features: np.ndarray,
        pooled: np.ndarray | None,
        tokens: np.ndarray,
        edge_id: str,
        cloud_id: str,
        models: Sequence[str] = (),
        states: TokenStates | None = None,
    ) -> MultiScores:
        """Cloud advantage from precomputed inputs (research code passes cached ones); `models`: also their
        per-model quality (`model_quality`); `states`: the prompts' token states (the "moe" tower)."""
        self.eval()
        edge_id, cloud_id = canonical_id(edge_id), canonical_id(cloud_id)
        v, head = self.direction(edge_id, cloud_id)
        theta = self.theta(self.inputs(features, pooled), states)
        quality = self.model_quality(theta, [canonical_id(m) for m in models])
        score = (theta @ v).double().numpy()
        if self.config.length_blend:
            sd = float(torch.sqrt(v @ self.theta_cov @ v).clamp_min(1e-8))
            z_len = (np.log1p(np.asarray(tokens, dtype=np.float64)) - self.config.log_tokens_mean) / max(
                self.config.log_tokens_std, 1e-8
            )
            score = score / sd + self.config.length_blend * z_len
        return MultiScores(score, head, edge_id, cloud_id, quality)

    # ------------------------------------------------------------ serving

    def encoder(self):
        if self._encoder is None:
            from router_model.encoder import TextEncoder

            self._encoder = TextEncoder(self.config.encoder, device=self.encoder_device, dtype=self.encoder_dtype)
        return self._encoder

    @torch.no_grad()
    def score(self, prompts: Sequence[str], edge_id: str, cloud_id: str, models: Sequence[str] = ()) -> MultiScores:
        """Predicted cloud advantage of each prompt for the pair, and which head scored it (and `models`' quality)."""
        prompts = list(prompts)
        st = self.encoder().encode(prompts)
        pooled = st.mean_pooled().numpy() if self.config.use_embedding and not self.needs_states else None
        tokens = st.mask.sum(1).numpy()
        feats = prompt_features(prompts, names=self.config.feature_names)
        states = st if self.needs_states else None
        return self.advantage_from_inputs(feats, pooled, tokens, edge_id, cloud_id, models, states)

    # ------------------------------------------------------------ checkpoint

    def save_pretrained(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps({"kind": "multi", **asdict(self.config)}, indent=2))
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(directory / WEIGHTS_NAME))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu", encoder_dtype: str = "float32") -> MultiRouter:
        """Load a checkpoint; the encoder (on `device`, in `encoder_dtype`) loads lazily on the first `score`."""
        from safetensors.torch import load_file

        directory = Path(directory)
        raw = json.loads((directory / CONFIG_NAME).read_text())
        if raw.pop("kind", None) != "multi":
            raise ValueError(f"{directory}: not a many-model router checkpoint (config.json lacks kind: multi)")
        model = cls(MultiRouterConfig(**raw))
        model.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
        model.encoder_device, model.encoder_dtype = device, encoder_dtype
        return model.eval()

    def for_pair(self, edge_id: str, cloud_id: str, models: Sequence[str] = ()) -> PairScorer:
        return PairScorer(self, edge_id, cloud_id, models)


@dataclass
class PairScores:
    """What the gateway reads of a router call (the shape of `RouteT2IRouter`'s scores, plus the head)."""

    prs: np.ndarray  # PRŜ = σ(−advantage): < 0.5 leans to the cloud, monotone in the advantage
    per_metric: np.ndarray  # [B, 0]: a many-model router predicts no per-metric PRS
    metrics: list[str]
    head: str
    advantage: np.ndarray
    quality: dict[str, np.ndarray] | None = None  # per-model quality of the arms' models (N-arm routing)


class PairScorer:
    """A `MultiRouter` fixed to one (edge, cloud) pair, scoring like the paper's router: `score(prompts)` → PRŜ.

    PRŜ = σ(−advantage) is monotone in the advantage, so the gateway's live α quantile works unchanged."""

    def __init__(self, router: MultiRouter, edge_id: str, cloud_id: str, models: Sequence[str] = ()):
        self.router = router
        self.edge_id, self.cloud_id = canonical_id(edge_id), canonical_id(cloud_id)
        self.head = router.direction(self.edge_id, self.cloud_id)[1]
        self.models = [canonical_id(m) for m in models]  # the arms' models: their quality is scored too

    def score(self, prompts: Sequence[str]) -> PairScores:
        out = self.router.score(prompts, self.edge_id, self.cloud_id, self.models)
        adv = np.asarray(out.advantage, dtype=np.float64)
        prs = 1.0 / (1.0 + np.exp(np.clip(adv, -50.0, 50.0)))
        return PairScores(prs, np.zeros((len(adv), 0)), [], out.head, adv, out.quality)

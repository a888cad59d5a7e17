"""Training of `MultiRouter` on a union of rated-prompt sets (dataset-balanced, early-stopped).

Targets are scores normalised per (dataset, dimension) (z over every prompt × model cell); the
`seconds` cost is never a target. Every dataset weighs the same in the loss whatever its size (CEMS's
10k prompts must not drown GenEval's 100), and within a dataset every dimension and every model pair
weighs the same. Two terms:
- quality cells: z(p, m, d) ≈ b_{dataset,d,m} + <θ(p), δ + a_m>, for every rated cell (AIGIQA-20K's
  single-model prompts included: they teach prompt difficulty and model ability);
- pair gaps: for every two models rated on the same prompt of a dataset, oriented better − worse by
  their dataset means, mean_d (z_better − z_worse) ≈ c_{pair} + <θ(p), g> (the generic head).
Early stopping on an inner validation split of prompts (by normalised text).

Towers "linear" and "mlp" train full-batch on the cached input table; the "moe" tower reads token states
(`lab/state_cache.py`, rows aligned with the input table) in length-sorted mini-batches (each padded only to
its own longest prompt, the batch order shuffled every epoch), with the same two losses and weights.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from router_model.encoder import TokenStates
from router_model.features import FEATURE_NAMES
from router_model.lab.ratings import RatedPrompt, normalisation, prompt_key
from router_model.multi_router import MultiRouter, MultiRouterConfig


@dataclass
class PromptInputs:
    """Per-prompt tower inputs, rows addressed by normalised prompt text."""

    features: np.ndarray
    pooled: np.ndarray
    tokens: np.ndarray
    row: dict[str, int]

    @classmethod
    def compute(cls, prompts: Sequence[str]) -> PromptInputs:
        from router_model.features import prompt_features
        from router_model.lab.cache import encode_pooled

        prompts = list(dict.fromkeys(prompts))
        pooled, tokens = encode_pooled(prompts)
        return cls(prompt_features(prompts), pooled, tokens, {prompt_key(p): i for i, p in enumerate(prompts)})

    def rows(self, prompts: Sequence[str]) -> np.ndarray:
        return np.array([self.row[prompt_key(p)] for p in prompts], dtype=np.int64)


@dataclass
class Targets:
    cell_row: np.ndarray
    cell_model: np.ndarray
    cell_bias: np.ndarray
    cell_y: np.ndarray
    cell_w: np.ndarray
    pair_row: np.ndarray
    pair_bias: np.ndarray
    pair_y: np.ndarray
    pair_w: np.ndarray
    models: list[str]
    n_cell_bias: int
    n_pair_bias: int

    def subset_rows(self, keep: np.ndarray) -> Targets:
        """Only the cells and pairs whose prompt row is in `keep` (a boolean mask over rows)."""
        c, p = keep[self.cell_row], keep[self.pair_row]
        return replace(
            self,
            cell_row=self.cell_row[c], cell_model=self.cell_model[c], cell_bias=self.cell_bias[c],
            cell_y=self.cell_y[c], cell_w=self.cell_w[c],
            pair_row=self.pair_row[p], pair_bias=self.pair_bias[p], pair_y=self.pair_y[p], pair_w=self.pair_w[p],
        )  # fmt: skip


def build_targets(sets: dict[str, Sequence[RatedPrompt]], inputs: PromptInputs, pairs_mode: str = "all") -> Targets:
    """Quality cells and oriented pair gaps of every set.

    `pairs_mode`: "all" (every two models of a set, each pair the same weight), "gap" (pairs weighted by
    their mean gap |Δz|: near-ties, whose orientation is noise, count little) or "natural" (only each
    set's natural edge→cloud pair, where it has one).
    """
    from router_model.lab.ratings import NATURAL_PAIRS

    models = sorted({m for items in sets.values() for it in items for m in it.scores})
    midx = {m: i for i, m in enumerate(models)}
    cells: list[tuple[int, int, int, float, float]] = []
    pairs: list[tuple[int, int, float, float]] = []
    cell_bias: dict[tuple, int] = {}
    pair_bias: dict[tuple, int] = {}
    for name, items in sorted(sets.items()):
        if not items:
            continue
        stats = normalisation(items)
        dims = list(stats)
        z = [
            {m: {d: (v[d] - stats[d][0]) / stats[d][1] for d in dims if d in v} for m, v in it.scores.items()}
            for it in items
        ]
        # cells: each dataset weighs 1, split equally over its dimensions
        n_per_dim = {d: sum(d in v for zi in z for v in zi.values()) for d in dims}
        for it, zi in zip(items, z, strict=True):
            r = inputs.row[it.key]
            for m, v in zi.items():
                for d, y in v.items():
                    b = cell_bias.setdefault((name, d, m), len(cell_bias))
                    cells.append((r, midx[m], b, y, 1.0 / (len(dims) * n_per_dim[d])))
        # pairs: oriented by the dataset mean over the prompts both models share
        ms = sorted({m for zi in z for m in zi})
        oriented = []
        for i, a in enumerate(ms):
            for b in ms[i + 1 :]:
                gaps = [
                    (inputs.row[it.key], np.mean([zi[b][d] - zi[a][d] for d in dims if d in zi[a] and d in zi[b]]))
                    for it, zi in zip(items, z, strict=True)
                    if a in zi and b in zi and any(d in zi[a] and d in zi[b] for d in dims)
                ]
                if len(gaps) >= 2:
                    sign = 1.0 if np.mean([g for _, g in gaps]) >= 0 else -1.0
                    oriented.append(((name, a, b), [(r, sign * g) for r, g in gaps]))
        if pairs_mode == "natural":
            nat = NATURAL_PAIRS.get(name)
            oriented = [o for o in oriented if nat is not None and {o[0][1], o[0][2]} == {nat.edge, nat.cloud}]
        share = np.array([abs(np.mean([g for _, g in gaps])) if pairs_mode == "gap" else 1.0 for _, gaps in oriented])
        share = share / share.sum() if len(share) and share.sum() > 0 else share
        for (key, gaps), sh in zip(oriented, share, strict=True):
            bi = pair_bias.setdefault(key, len(pair_bias))
            for r, g in gaps:
                pairs.append((r, bi, g, sh / len(gaps)))
    c = np.array(cells, dtype=np.float64).reshape(-1, 5)
    p = np.array(pairs, dtype=np.float64).reshape(-1, 4)
    return Targets(
        c[:, 0].astype(np.int64), c[:, 1].astype(np.int64), c[:, 2].astype(np.int64), c[:, 3], c[:, 4],
        p[:, 0].astype(np.int64), p[:, 1].astype(np.int64), p[:, 2], p[:, 3],
        models, len(cell_bias), len(pair_bias),
    )  # fmt: skip


def _val_mask(keys: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    h = np.array([int.from_bytes(hashlib.sha256(f"{seed}:{k}".encode()).digest()[:4], "little") for k in keys])
    return (h % 10_000) < fraction * 10_000


def train_multi(
    sets: dict[str, Sequence[RatedPrompt]],
    inputs: PromptInputs,
    config: MultiRouterConfig | None = None,
    l2: float = 1e-3,
    pair_weight: float = 1.0,
    pairs_mode: str = "all",
    lr: float = 1e-2,
    max_epochs: int = 400,
    patience: int = 40,
    val_fraction: float = 0.1,
    seed: int = 0,
    states: TokenStates | None = None,
    batch_size: int = 256,
) -> tuple[MultiRouter, dict]:
    """Adam on the dataset-balanced quality and pair losses; returns the router and a summary.

    Full-batch for the "linear"/"mlp" towers; the "moe" tower needs `states` (row r = the prompt of
    `inputs` row r) and trains in mini-batches of `batch_size` prompts (an epoch: every batch once)."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    targets = build_targets(sets, inputs, pairs_mode)
    used = np.zeros(len(inputs.tokens), dtype=bool)
    used[targets.cell_row] = True
    used[targets.pair_row] = True
    rows = np.flatnonzero(used)
    keys = [None] * len(inputs.tokens)
    for k, r in inputs.row.items():
        keys[r] = k
    val = np.zeros(len(inputs.tokens), dtype=bool)
    val[rows] = _val_mask([keys[r] for r in rows], val_fraction, seed)
    train_t, val_t = targets.subset_rows(used & ~val), targets.subset_rows(val)

    config = replace(config or MultiRouterConfig(), models=targets.models)
    if config.tower == "moe":
        if states is None or len(states) != len(inputs.tokens):
            raise ValueError("the 'moe' tower trains on token states: pass states= with one row per input row")
        config.embed_dim = int(states.states.shape[-1])
    pooled = config.use_embedding and config.tower != "moe"
    feats = inputs.features  # all of FEATURE_NAMES (then the config's are picked) or already the config's columns
    if feats.shape[1] == len(FEATURE_NAMES) != len(config.feature_names):
        feats = feats[:, [FEATURE_NAMES.index(n) for n in config.feature_names]]
    x_all = np.concatenate([feats, inputs.pooled], 1) if pooled else feats
    x_tr = x_all[used & ~val]
    config.x_mean = x_tr.mean(0).tolist()
    config.x_std = np.maximum(x_tr.std(0), 1e-6).tolist()
    log_tok = np.log1p(inputs.tokens[used & ~val])
    config.log_tokens_mean, config.log_tokens_std = float(log_tok.mean()), float(max(log_tok.std(), 1e-6))
    config.data = {name: len(items) for name, items in sets.items()}
    model = MultiRouter(config)
    cell_b = torch.nn.Parameter(torch.zeros(targets.n_cell_bias))
    pair_b = torch.nn.Parameter(torch.zeros(targets.n_pair_bias))
    x = torch.as_tensor(x_all, dtype=torch.float32)
    opt = torch.optim.Adam([*model.parameters(), cell_b, pair_b], lr=lr)

    def loss_of(t: dict[str, torch.Tensor], theta: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        """The weighted losses of targets `t`; `theta` row pos[r] belongs to input row r (all rows: pos None)."""
        cr, pr = (t["cell_row"], t["pair_row"]) if pos is None else (pos[t["cell_row"]], pos[t["pair_row"]])
        a = model.ability[t["cell_model"]] + model.difficulty
        pred = cell_b[t["cell_bias"]] + (theta[cr] * a).sum(1)
        cell = (t["cell_w"] * (pred.double() - t["cell_y"]) ** 2).sum() / t["cell_w"].sum().clamp_min(1e-12)
        pp = pair_b[t["pair_bias"]] + theta[pr] @ model.generic
        pair = (t["pair_w"] * (pp.double() - t["pair_y"]) ** 2).sum() / t["pair_w"].sum().clamp_min(1e-12)
        return cell + pair_weight * pair

    def penalty() -> torch.Tensor:
        reg = sum((w**2).sum() for n, w in model.tower.named_parameters() if n.endswith("weight"))
        return reg + (model.ability**2).sum() + (model.generic**2).sum() + (model.difficulty**2).sum()

    if config.tower == "moe":
        step, evaluate = _minibatch_steps(model, x, states, train_t, val_t, used & ~val, val, batch_size, loss_of)
    else:
        tr, va = _tensors(train_t), _tensors(val_t)

        def step(opt, l2: float, penalty) -> float:
            model.train()
            opt.zero_grad()
            loss = loss_of(tr, model.theta(x)) + l2 * penalty()
            loss.backward()
            opt.step()
            return float(loss.detach())

        def evaluate() -> float | None:
            return float(loss_of(va, model.theta(x))) if len(val_t.cell_y) or len(val_t.pair_y) else None

    best, best_state, bad, epochs = float("inf"), None, 0, 0
    for epochs in range(1, max_epochs + 1):  # noqa: B007 (reported after the loop)
        train_loss = step(opt, l2, penalty)
        model.eval()
        with torch.no_grad():
            v = evaluate()
        v = train_loss if v is None else v
        if v < best - 1e-6:
            best, bad = v, 0
            best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        th = theta_of_rows(model, x, states, np.flatnonzero(used & ~val))
        model.theta_cov.copy_(torch.cov(th.T) if len(th) > 1 else torch.eye(th.shape[1]))
    summary = {"epochs": epochs, "val_loss": best, "seconds": time.perf_counter() - t0, "models": len(targets.models)}
    return model, summary


def theta_of_rows(model: MultiRouter, x: torch.Tensor, states: TokenStates | None, rows: np.ndarray,
                  batch_size: int = 1024) -> torch.Tensor:  # fmt: skip
    """θ of input rows `rows` (in that order); the "moe" tower's token states sliced in length-sorted batches."""
    if not model.needs_states:
        return model.theta(x[torch.as_tensor(rows)])
    assert states is not None
    batches = _length_batches(np.asarray(rows), states.mask.sum(dim=1).numpy(), batch_size)
    out = torch.zeros(len(rows), model.config.rank)
    where = {int(r): i for i, r in enumerate(rows)}
    for b in batches:
        out[torch.as_tensor([where[int(r)] for r in b])] = model.theta(x[torch.as_tensor(b)], states.subset(b))
    return out


def _tensors(t: Targets, keep: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    if keep is not None:
        t = t.subset_rows(keep)
    names = ("cell_row", "cell_model", "cell_bias", "cell_y", "cell_w", "pair_row", "pair_bias", "pair_y", "pair_w")
    return {k: torch.as_tensor(getattr(t, k)) for k in names}


def _length_batches(rows: np.ndarray, tokens: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """`rows` sorted by token count and cut into batches of `batch_size` (similar lengths pad little)."""
    ordered = rows[np.argsort(tokens[rows], kind="stable")]
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def _minibatch_steps(model, x, states, train_t, val_t, fit_mask, val_mask, batch_size, loss_of):
    """(step(opt, l2, penalty) → mean training loss of one epoch, evaluate() → validation loss or None) for the
    "moe" tower: each batch's token states, inputs and targets sliced once, up front."""
    tokens = states.mask.sum(dim=1).numpy()
    n = len(tokens)

    def prepare(rows: np.ndarray, t: Targets):
        keep = np.zeros(n, dtype=bool)
        keep[rows] = True
        pos = torch.full((n,), -1, dtype=torch.long)
        pos[torch.as_tensor(rows)] = torch.arange(len(rows))
        return states.subset(rows), x[torch.as_tensor(rows)], _tensors(t, keep), pos

    train = [prepare(b, train_t) for b in _length_batches(np.flatnonzero(fit_mask), tokens, batch_size)]
    train = [b for b in train if len(b[2]["cell_y"]) or len(b[2]["pair_y"])]
    checks = [prepare(b, val_t) for b in _length_batches(np.flatnonzero(val_mask), tokens, batch_size)]
    val_weight = float(val_t.cell_w.sum()) + float(val_t.pair_w.sum())

    def step(opt, l2: float, penalty) -> float:
        model.train()
        total = 0.0
        for j in torch.randperm(len(train)).tolist():
            st, xb, t, pos = train[j]
            opt.zero_grad()
            loss = loss_of(t, model.theta(xb, st), pos) + l2 * penalty()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        return total / max(len(train), 1)

    def evaluate() -> float | None:
        if not checks or val_weight <= 0:
            return None
        # each batch's loss is normalised by its own weights: weigh it back by its share of the validation weight
        total = 0.0
        for st, xb, t, pos in checks:
            share = (float(t["cell_w"].sum()) + float(t["pair_w"].sum())) / val_weight
            if share > 0:
                total += share * float(loss_of(t, model.theta(xb, st), pos))
        return total

    return step, evaluate


def train_on_sets(
    sets: dict[str, Sequence[RatedPrompt]], design: str = "ridge", inputs: PromptInputs | None = None, **kw
) -> MultiRouter:
    """Encode every prompt of `sets` (features + pooled encoder states) and fit; the entry point for a checkpoint.

    `design="ridge"` (the LODO winner, `fit_ridge`: kw alpha, pairs_mode, length_blend) or `"irt"`
    (`train_multi`: kw config, l2, …).
    """
    if inputs is None:
        inputs = PromptInputs.compute([it.prompt for items in sets.values() for it in items])
    if design == "ridge":
        from router_model.lab.multi_ridge import fit_ridge  # it builds on this module's targets

        return fit_ridge(sets, inputs, **kw)
    if design == "irt":
        return train_multi(sets, inputs, **kw)[0]
    raise ValueError(f"design must be 'ridge' or 'irt', got {design!r}")

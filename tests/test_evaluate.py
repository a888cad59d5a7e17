"""ΔP / reduction / AUC arithmetic on hand-made cases, and the k-fold evaluation end to end on real data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from router_model.encoder import TextEncoder, TokenStates
from router_model.lab.data import RoutingExample, import_genai_bench
from router_model.lab.delta_p import (
    cloud_call_reduction,
    curve_auc,
    delta_p_curve,
    n_cloud,
    paired_bootstrap,
    rho_grid,
    rho_key,
    route_quality,
)
from router_model.lab.evaluate import evaluate
from router_model.lab.plots import plot_delta_p, plot_noun_win_rate
from router_model.lab.results import bootstrap_markdown, markdown_table, result_json

GENAI = Path(__file__).resolve().parents[2] / "shared" / "data" / "genai_bench_ratings.json"
CHEAP = ["random", "noun_count", "prompt_length", "zooter", "oracle"]

# Four prompts, one metric: cloud gains 2, 1, 0, −1 (total 2).
Q_E = np.array([[1.0], [1.0], [1.0], [1.0]])
Q_C = np.array([[3.0], [2.0], [1.0], [0.0]])
QUARTERS = [0.0, 0.25, 0.5, 0.75, 1.0]


def test_edge_only_is_zero_and_cloud_only_is_hundred():
    scores = np.array([0.3, 0.9, 0.1, 0.5])
    curve = delta_p_curve(scores, Q_E, Q_C, [0.0, 1.0])
    assert curve[0] == 0.0
    assert curve[1] == pytest.approx(100.0)


def test_oracle_order_on_four_prompts_has_known_values():
    gain = (Q_C - Q_E)[:, 0]
    curve = delta_p_curve(gain, Q_E, Q_C, QUARTERS)
    # top-1: +2 of 2 → 100; top-2: +3 → 150; top-3: +3 → 150; all: 100.
    np.testing.assert_allclose(curve, [0.0, 100.0, 150.0, 150.0, 100.0])
    assert curve_auc(curve, QUARTERS) == pytest.approx(0.25 * (50 + 125 + 150 + 125))
    # the reverse order loses quality first
    np.testing.assert_allclose(delta_p_curve(-gain, Q_E, Q_C, QUARTERS), [0.0, -50.0, -50.0, 0.0, 100.0])


def test_delta_p_averages_normalised_gains_over_metrics():
    q_e = np.array([[0.0, 10.0], [0.0, 10.0]])
    q_c = np.array([[1.0, 10.0], [0.0, 30.0]])  # metric 1 gain from prompt 0, metric 2 from prompt 1
    # sending prompt 0 recovers all of metric 1 and none of metric 2: ΔP = (100 + 0) / 2
    assert delta_p_curve(np.array([1.0, 0.0]), q_e, q_c, [0.5])[0] == pytest.approx(50.0)
    np.testing.assert_allclose(route_quality(np.array([1.0, 0.0]), q_e, q_c, 0.5), [0.5, 10.0])


def test_ties_are_broken_by_the_tiebreak_not_by_chance():
    flat = np.zeros(4)
    first = delta_p_curve(flat, Q_E, Q_C, [0.5])
    assert first == pytest.approx(delta_p_curve(flat, Q_E, Q_C, [0.5]))
    assert first[0] == pytest.approx(150.0)  # default tiebreak: index order, prompts 0 and 1
    assert delta_p_curve(flat, Q_E, Q_C, [0.5], tiebreak=np.array([3, 2, 1, 0]))[0] == pytest.approx(-50.0)


def test_budget_rounds_down_and_rejects_bad_rho():
    assert n_cloud(0.5, 5) == 2
    assert n_cloud(0.3, 10) == 3  # 0.3 * 10 is 2.9999… in floating point
    with pytest.raises(ValueError, match="ρ must be in"):
        n_cloud(1.5, 10)


def test_undefined_delta_p_is_an_error():
    with pytest.raises(ValueError, match="ΔP is undefined"):
        delta_p_curve(np.zeros(2), np.ones((2, 1)), np.ones((2, 1)), [0.5])


def test_rho_keys_format_cleanly():
    keys = [rho_key(r) for r in rho_grid()]
    assert len(keys) == 21
    assert keys[:4] == ["0", "0.05", "0.1", "0.15"]
    assert keys[-1] == "1" and "0.35" in keys and "0.5" in keys


def test_cloud_call_reduction():
    curve = [0.0, 30.0, 55.0, 70.0, 100.0]
    assert cloud_call_reduction(curve, QUARTERS, 50) == pytest.approx(50.0)
    assert cloud_call_reduction(curve, QUARTERS, 30) == pytest.approx(75.0)
    assert math.isnan(cloud_call_reduction([0.0, 10.0, 20.0, 30.0, 35.0], QUARTERS, 40))


def test_paired_bootstrap_oracle_beats_random():
    rng = np.random.default_rng(1)
    q_e, q_c = rng.normal(size=(80, 1)), rng.normal(0.5, 1.0, size=(80, 1))
    oracle, random = (q_c - q_e)[:, 0], rng.random(80)
    out = paired_bootstrap(oracle, random, q_e, q_c, rho_grid(), resamples=200, seed=0)
    assert out["delta_p_0.5"]["win_share"] == 1.0
    assert out["auc"]["ci_low"] > 0
    assert out == paired_bootstrap(oracle, random, q_e, q_c, rho_grid(), resamples=200, seed=0)


# ---------------------------------------------------------------- end to end on GenAI-Bench


@pytest.fixture(scope="module")
def subset() -> list[RoutingExample]:
    if not GENAI.exists():
        pytest.skip(f"{GENAI} not present")
    return import_genai_bench(GENAI, "SDXL_2_1", "DALLE_3")[:60]


@pytest.fixture(scope="module")
def states(subset) -> TokenStates:
    return TextEncoder().encode([ex.prompt for ex in subset])


@pytest.fixture(scope="module")
def kfold_result(subset, states) -> dict:
    return evaluate(subset, methods=CHEAP, folds=3, seed=0, states=states, bootstrap=0, log=None)


@pytest.mark.slow
def test_kfold_result_follows_the_json_contract(kfold_result):
    r = kfold_result
    assert r["n_prompts"] == 60 and r["folds"] == 3 and r["dims"] == ["alignment"]
    assert list(r["methods"]) == CHEAP
    for name, m in r["methods"].items():
        assert set(m) >= {"delta_p", "delta_p_std", "cloud_call_reduction", "auc"}, name
        assert list(m["delta_p"]) == [rho_key(x) for x in rho_grid()]
        assert m["delta_p"]["0"] == 0.0 and m["delta_p"]["1"] == pytest.approx(100.0)
        assert m["delta_p_std"]["1"] == pytest.approx(0.0, abs=1e-9)
        assert set(m["cloud_call_reduction"]) == {"40", "50", "60", "80"}
    oracle, random = r["methods"]["oracle"], r["methods"]["random"]
    for name, m in r["methods"].items():  # the oracle is the optimum of every fold at every ρ
        assert all(oracle["delta_p"][k] >= v - 1e-9 for k, v in m["delta_p"].items()), name
    assert oracle["auc"] > random["auc"] + 20
    assert r["per_dimension"]["edge_only"]["alignment"] < r["per_dimension"]["cloud_only"]["alignment"]
    assert json.loads(result_json(r))["methods"]["oracle"]["auc"] == pytest.approx(oracle["auc"])


@pytest.mark.slow
def test_kfold_is_deterministic(subset, states, kfold_result):
    again = evaluate(subset, methods=["random", "zooter"], folds=3, seed=0, states=states, bootstrap=0, log=None)
    for name in ("random", "zooter"):
        assert again["methods"][name]["delta_p"] == kfold_result["methods"][name]["delta_p"]


@pytest.mark.slow
def test_markdown_and_plots(subset, kfold_result, tmp_path):
    table = markdown_table(kfold_result)
    assert table.count("\n| oracle |") == 2  # main table and the per-dimension table
    assert "ΔP(50%)" in table and "| edge_only |" in table and "| cloud_only |" in table
    for path in (
        plot_delta_p(kfold_result, tmp_path / "dp.png"),
        plot_noun_win_rate(subset, tmp_path / "nouns" / "n.png"),
    ):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_train_test_mode_uses_one_split(subset, states):
    r = evaluate(
        subset[40:], train_examples=subset[:40], methods=["oracle", "hybrid_llm"], states=states, bootstrap=0, log=None
    )
    assert r["mode"] == "train-test" and r["folds"] == 1
    assert r["n_prompts"] == 20 and r["n_train_prompts"] == 40


@pytest.mark.slow
def test_routet2i_and_checkpoint_get_a_paired_bootstrap(subset, states, tmp_path):
    fast = {"epochs": 5}
    r = evaluate(
        subset, methods=["random", "routet2i"], folds=3, states=states, bootstrap=100, routet2i_kwargs=fast, log=None
    )
    b = r["bootstrap"]
    assert (b["method"], b["baseline"]) == ("routet2i", "random")
    for key in ("delta_p_0.5", "auc"):
        assert b[key]["ci_low"] <= b[key]["mean_diff"] <= b[key]["ci_high"] and 0 <= b[key]["win_share"] <= 1
    assert "routet2i − random" in bootstrap_markdown(r)

    from router_model.lab.baselines import make_router

    router = make_router("routet2i", train_kwargs=fast).fit(subset[:30], states.subset(range(30))).router
    router.save_pretrained(tmp_path / "ckpt")
    r = evaluate(subset[30:], methods=["prompt_length"], router_dir=tmp_path / "ckpt", folds=3, bootstrap=50, log=None)
    assert list(r["methods"]) == ["prompt_length", "checkpoint"]
    assert r["bootstrap"]["method"] == "checkpoint"


def test_bad_method_name_is_reported(subset):
    with pytest.raises(ValueError, match="unknown routing method 'bert'"):
        evaluate(subset, methods=["bert"], folds=3, bootstrap=0, log=lambda *a: None)


@pytest.mark.slow
def test_results_page_is_written_from_computed_numbers(tmp_path):
    from router_model.lab.report import PAIRS, write_results_page

    if not GENAI.exists():
        pytest.skip(f"{GENAI} not present")
    pairs = tuple(p for p in PAIRS if p.slug in ("genai_sd21_dalle3", "agiqa_sd15_sdxl"))
    cheap = {"methods": ["random", "oracle"], "bootstrap": 0, "log": None, "sections": "kfold"}
    page = write_results_page(tmp_path / "docs", GENAI.parent, folds=3, seed=1, pairs=pairs, **cheap)
    text = page.read_text()
    assert "routet2i evaluate --results-page docs/" in text and "seed 1" in text
    assert "83.97" in text and "not comparable one to one" in text
    for pair in pairs:
        result = json.loads((tmp_path / "docs" / f"{pair.slug}.json").read_text())
        assert result["folds"] == 3 and result["pair"]["cloud"] == pair.cloud
        assert f"{result['methods']['oracle']['delta_p']['0.5']:.2f} ± " in text  # the table comes from the JSON
        for png in (f"{pair.slug}_delta_p.png", f"{pair.slug}_nouns.png"):
            assert f"]({png})" in text and (tmp_path / "docs" / png).stat().st_size > 1000

    with pytest.raises(FileNotFoundError, match="rating file missing"):
        write_results_page(tmp_path / "x", tmp_path / "nowhere", methods=["random"], log=None)

"""`routet2i frontier` on synthetic ratings with a planted structure: a cheap model as good as the dear one on
short prompts, much worse on long ones, and a middle model that is mediocre everywhere."""

import gzip
import json

import numpy as np
import pytest

from gateway.cli import main
from router_model.lab import frontier_curves as fc
from router_model.lab.frontier import curves_of, parse_costs, run_frontier

WORDS = [
    "cat",
    "dog",
    "house",
    "tree",
    "river",
    "red",
    "blue",
    "small",
    "large",
    "castle",
    "robot",
    "city",
    "night",
    "garden",
    "horse",
    "boat",
]
COSTS = ["SD-Turbo=1", "mid=3", "DALLE_3=10"]


def _planted(path, n=180, seconds=False, seed=0):
    rng = np.random.default_rng(seed)
    rows = ["prompt_id,prompt,model,dimension,score,rater,image"]
    for i in range(n):
        k = int(rng.integers(2, 40))
        prompt = f"p{i} " + " ".join(rng.choice(WORDS, k))
        long = k >= 16
        q = {"SD-Turbo": 2.0 if long else 4.0, "mid": 3.0, "DALLE_3": 4.0}
        t = {"SD-Turbo": 0.2, "mid": 1.0, "DALLE_3": 3.0}
        for m, v in q.items():
            for r in range(2):
                rows.append(f"{i},{prompt},{m},quality,{v + rng.normal(0, 0.3):.3f},r{r},")
            if seconds:
                rows.append(f"{i},{prompt},{m},seconds,{t[m] * (1 + 0.1 * rng.random()):.3f},,")
    with gzip.open(path, "wt", encoding="utf-8", newline="") as fh:
        fh.write("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return _planted(tmp_path_factory.mktemp("frontier") / "planted.csv.gz")


@pytest.fixture(scope="module")
def result(planted):
    return run_frontier(planted, costs=COSTS, folds=3, cache=None, bootstrap=20)


def test_n_arm_dominates_single_models_and_random_mix(result):
    curves = curves_of(result)
    n_arm = curves["n_arm"]
    for name, pts in curves.items():
        if name.startswith("single:"):
            assert fc.quality_at(n_arm, pts[:, 0])[0] >= pts[0, 1] - 0.02, name
    grid = fc.budget_grid(n_arm, curves["random_mix"])
    gap = fc.quality_at(n_arm, grid) - fc.quality_at(curves["random_mix"], grid)
    assert np.nanmin(gap) >= -0.02
    assert np.nanmean(gap) > 0.3  # the planted structure is worth ~1 quality point at mid budgets
    assert result["margins"]["vs_singles_min"]["estimate"] >= -0.02


def test_oracle_dominates_every_method(result):
    curves = curves_of(result)
    oracle = curves["oracle"]
    for name, pts in curves.items():
        grid = np.linspace(pts[:, 0].min(), pts[:, 0].max(), 25)
        assert np.all(fc.quality_at(oracle, grid) >= fc.quality_at(pts, grid) - 1e-9), name


def test_cli_json_contract_and_plot(planted, tmp_path, capsys):
    out, png = tmp_path / "f.json", tmp_path / "f.png"
    argv = ["frontier", "--test", str(planted), "--costs", *COSTS, "--folds", "3", "--bootstrap", "5"]
    assert main([*argv, "--cache", str(tmp_path / "none.npz"), "--json", str(out), "--plot", str(png)]) == 0
    data = json.loads(out.read_text())
    names = set(data["methods"])
    singles = {"single:sd-turbo", "single:planted:mid", "single:dall-e-3"}
    assert names == singles | {"random_mix", "length_policy", "two_arm", "two_arm_envelope", "n_arm", "oracle"}
    for m in data["methods"].values():
        assert m["points"] and all(set(p) == {"cost", "quality"} for p in m["points"])
        assert all(isinstance(p["cost"], float) and isinstance(p["quality"], float) for p in m["points"])
    assert data["costs"] == {"sd-turbo": 1.0, "planted:mid": 3.0, "dall-e-3": 10.0}
    assert png.stat().st_size > 1000
    assert "n_arm" in capsys.readouterr().out


def test_page_states_the_two_arm_verdict_from_the_margins(result):
    from router_model.lab import frontier_page as fp

    shown = "shown" if result["margins"]["vs_two_arm_min"]["estimate"] >= -1e-9 else "not shown"
    assert fp.at_every_cost(result) == (shown == "shown")
    assert f"planted: **{shown}** (worst-cost margin" in fp.verdict({"planted": result})
    text = fp.summary({"planted": result}) + fp.section(result, "Planted", "x.png")
    assert "two_arm_envelope, optimistic reference (mean)" in text and f"| {shown} |" in text
    assert "{verdict}" in fp.HEADER


def test_costs_parse_raw_and_canonical_names():
    known = ["sd-turbo", "dall-e-3", "x:mid"]
    assert parse_costs(["SD-Turbo=1", "dall-e-3=0.04", "mid=2.5"], known, "x") == {
        "sd-turbo": 1.0, "dall-e-3": 0.04, "x:mid": 2.5,
    }  # fmt: skip
    with pytest.raises(ValueError, match="not a number"):
        parse_costs(["sd-turbo=cheap", "dall-e-3=1"], known, "x")
    with pytest.raises(ValueError, match="MODEL=COST"):
        parse_costs(["sd-turbo", "dall-e-3=1"], known, "x")


def test_unknown_model_is_a_clear_cli_error_naming_the_known_ones(planted, tmp_path, capsys):
    argv = ["frontier", "--test", str(planted), "--costs", "SD-Turbo=1", "sdxl=4", "--json", str(tmp_path / "x.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unknown model 'sdxl'" in err and "dall-e-3" in err and "sd-turbo" in err and "planted:mid" in err
    assert not (tmp_path / "x.json").exists()


def test_measured_seconds_are_the_cost_without_costs(tmp_path):
    path = _planted(tmp_path / "timed.csv.gz", n=90, seconds=True, seed=1)
    r = run_frontier(path, folds=3, cache=None, bootstrap=5)
    assert r["cost_unit"] == "measured seconds per image"
    assert 2.9 < r["costs"]["dall-e-3"] < 3.4 and 0.19 < r["costs"]["sd-turbo"] < 0.23
    assert r["methods"]["n_arm"]["points"][0]["cost"] == pytest.approx(r["costs"]["sd-turbo"], rel=0.01)


def test_curve_helpers():
    pts = np.array([[1.0, 1.0], [2.0, 0.5], [3.0, 2.0], [3.0, 1.5]])
    assert fc.upper_envelope(pts).tolist() == [[1.0, 1.0], [3.0, 2.0]]
    q = fc.quality_at(pts, np.array([0.5, 2.0, 5.0]))
    assert np.isnan(q[0]) and q[1] == pytest.approx(1.5) and q[2] == pytest.approx(2.0)


def _two_arm_and_envelope(quality, cost, fold):
    """Both two-arm bars with perfect predictions, read on one grid of budgets."""
    two, env = fc.two_arm(quality, cost, quality, cost, fold), fc.two_arm_envelope(quality, cost, quality, cost)
    grid = np.linspace(cost.mean(0).min(), cost.mean(0).max(), 57)
    return fc.quality_at(two, grid), fc.quality_at(env, grid)


def test_deployable_two_arm_chooses_its_pair_on_the_other_folds():
    # Fold 0's prompts are good on model 1 and bad on model 2; fold 1's the other way round. Predictions are
    # perfect, so the envelope (pair chosen on the test labels) sends each fold's prompts to the right model,
    # while the deployable router, choosing on the other fold, picks the pair that is wrong for each fold.
    rng = np.random.default_rng(0)
    fold = np.repeat([0, 1], 40)
    good = np.where(fold == 0, 1, 2)
    quality = np.full((80, 3), 2.0) + rng.normal(0, 0.1, (80, 3))
    quality[np.arange(80), good] += 2.0
    quality[np.arange(80), 3 - good] -= 1.0
    cost = np.tile([1.0, 4.0, 4.5], (80, 1))
    two, env = _two_arm_and_envelope(quality, cost, fold)
    assert np.all(two <= env + 1e-9)  # with perfect predictions it cannot beat the envelope, and it is far below
    assert np.mean(env - two) > 0.5
    pairs, pair, _ = fc.two_arm_choices(quality, cost, quality, fold, 0, fc.two_arm_budgets(cost))
    assert {pairs[j] for j in pair[-10:]} == {(0, 2)}  # fold 0 is sent to model 2, its worst, at high budgets


def test_deployable_two_arm_equals_the_envelope_when_one_pair_dominates():
    # Five folds that are copies of one another (the same 20 gaps of model 2 over model 0; model 1 costs more
    # than model 0 and adds nothing): the pair (0, 2) is best on every fold at every budget, so choosing it on
    # the other folds loses nothing and both bars read the same curve.
    gaps = np.linspace(2.0, 0.1, 20)
    fold = np.repeat(np.arange(5), 20)
    quality = np.c_[np.ones(100), np.ones(100), 1.0 + np.tile(gaps, 5)]
    cost = np.tile([1.0, 2.0, 3.0], (100, 1))
    two, env = _two_arm_and_envelope(quality, cost, fold)
    assert np.allclose(two, env, atol=1e-9)
    for f in range(5):
        pairs, pair, _ = fc.two_arm_choices(quality, cost, quality, fold, f, fc.two_arm_budgets(cost))
        assert {pairs[j] for j in pair} <= {(0, 1), (0, 2)}  # (0, 1) only at share 0: model 0 alone


def test_deployable_two_arm_never_reads_the_test_folds_labels():
    rng = np.random.default_rng(3)
    n = 300
    quality = rng.normal(size=(n, 4)) + np.array([0.0, 0.3, 0.5, 0.8])
    pred_q = quality + rng.normal(size=(n, 4))
    cost = np.tile([1.0, 2.0, 5.0, 10.0], (n, 1))
    fold = rng.integers(0, 5, n)
    budgets = fc.two_arm_budgets(cost)
    chosen = fc.two_arm_choices(quality, cost, pred_q, fold, 2, budgets)
    own = np.flatnonzero(fold == 2)
    shuffled = quality.copy()
    shuffled[own] = quality[rng.permutation(own)]  # fold 2's true qualities permuted among its own prompts
    noise = quality.copy()
    noise[own] = rng.normal(0, 50, (len(own), 4))  # or replaced by noise
    for q in (shuffled, noise):
        again = fc.two_arm_choices(q, cost, pred_q, fold, 2, budgets)
        assert again[0] == chosen[0] and np.array_equal(again[1], chosen[1]) and np.array_equal(again[2], chosen[2])
        assert not np.allclose(fc.two_arm(q, cost, pred_q, cost, fold), fc.two_arm(quality, cost, pred_q, cost, fold))
    other = quality.copy()
    rest = np.flatnonzero(fold != 2)
    other[rest] = quality[rng.permutation(rest)]  # the other folds' labels do decide the choice
    moved = fc.two_arm_choices(other, cost, pred_q, fold, 2, budgets)
    assert not (np.array_equal(moved[1], chosen[1]) and np.array_equal(moved[2], chosen[2]))


def test_train_files_and_one_dimension(planted, tmp_path):
    other = _planted(tmp_path / "planted.csv.gz", n=60, seed=2)  # same dataset name, other prompts
    r = run_frontier(planted, [other, planted], COSTS, "quality", folds=3, cache=None, bootstrap=5)
    assert r["train"] == [str(other), str(planted)] and r["dimensions"] == ["quality"]
    assert r["margins"]["vs_singles_min"]["estimate"] >= -0.02
    with pytest.raises(ValueError, match="--dimension 'beauty' is not in planted; known: quality"):
        run_frontier(planted, costs=COSTS, dimension="beauty", folds=3, cache=None, bootstrap=5)


def _poisoned_fold_predictions(path, predictor):
    """Raw fold predictions before and after the labels of fold 0's prompts are replaced by noise."""
    import copy

    from router_model.lab import frontier as fr

    name, items = fr.load_rated(path)
    test = fr.test_matrix(name, items, parse_costs(COSTS, sorted({m for it in items for m in it.scores}), name), None)
    inputs, _ = fr.build_inputs([it.prompt for it in items], None)
    fold = fr.fold_of(test.items, 3, 0)
    log: list[dict] = []
    clean, _ = fr.fold_predictions(test, items, {}, inputs, 3, 0, predictor, log)
    held = {it.key for it, g in zip(test.items, fold, strict=True) if g == 0}
    rng = np.random.default_rng(5)
    poisoned = copy.deepcopy(items)
    for it in poisoned:
        if it.key in held:
            for dims in it.scores.values():
                for d in dims:
                    dims[d] = float(rng.normal(0, 50))
    dirty, _ = fr.fold_predictions(test, poisoned, {}, inputs, 3, 0, predictor)
    return clean, dirty, fold, log


@pytest.mark.parametrize("predictor", ["ridge", "auto"])
def test_fold_predictions_and_their_selection_never_see_the_fold(planted, predictor):
    clean, dirty, fold, log = _poisoned_fold_predictions(planted, predictor)
    assert np.array_equal(clean[fold == 0], dirty[fold == 0])  # the poisoned fold's own predictions: untouched
    assert not np.allclose(clean[fold != 0], dirty[fold != 0])  # the poison is real: the other folds train on it
    assert len(log) == 3 and all(e["predictor"] in ("ridge", "irt") for e in log)
    if predictor == "auto":
        assert all("inner_mse_irt" in e and "inner_mse_ridge" in e for e in log)
    assert all("alpha" in e and e["gamma"] == 0.0 for e in log if e["predictor"] == "ridge")  # no embedding here


def test_ridge_predictor_finds_the_planted_length_effect(planted):
    r = run_frontier(planted, costs=COSTS, folds=3, cache=None, bootstrap=5, predictor="ridge")
    assert r["predictor_folds"] and all(e["predictor"] == "ridge" for e in r["predictor_folds"])
    assert r["margins"]["vs_singles_min"]["estimate"] >= -0.02
    assert r["margins"]["vs_two_arm_mean"]["estimate"] >= -0.05
    with pytest.raises(ValueError, match="predictor must be one of"):
        run_frontier(planted, costs=COSTS, folds=3, cache=None, bootstrap=5, predictor="mlp")


def test_ridge_selection_prefers_the_embedding_only_when_it_helps():
    from router_model.lab import frontier_ridge as frr
    from router_model.lab.ratings import RatedPrompt

    rng = np.random.default_rng(0)
    n = 300
    cheap = rng.normal(size=(n, 3))
    emb = rng.normal(size=(n, 20))
    signal = emb[:, 0] * 2.0  # the quality of model "b" depends on the embedding only
    items = [RatedPrompt(f"p{i}", "x", {"a": {"q": float(rng.normal())}, "b": {"q": float(signal[i] + rng.normal())}})
             for i in range(n)]  # fmt: skip
    row = {it.key: i for i, it in enumerate(items)}
    chosen = frr.select(items, ["a", "b"], ["q"], cheap, emb, lambda it: row[it.key])
    assert chosen.gamma > 0
    noise = frr.select(items, ["a", "b"], ["q"], cheap, rng.normal(size=(n, 20)), lambda it: row[it.key])
    assert noise.gamma < chosen.gamma and noise.inner_mse > chosen.inner_mse

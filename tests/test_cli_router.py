"""The router commands end to end on real data: train → score → calibrate → evaluate (k-fold and --router)."""

import json
from pathlib import Path

import pytest

from gateway.cli import main
from router_model.lab.data import append_examples, import_genai_bench

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("router_cli")
    examples = import_genai_bench(DATA / "genai_bench_ratings.json", "SDXL_2_1", "DALLE_3")
    append_examples(root / "train.jsonl", examples[:120])
    append_examples(root / "test.jsonl", examples[120:180])
    return root


@pytest.mark.slow
def test_train_score_calibrate_evaluate(split, capsys):
    ckpt = split / "router"
    assert main(["train", "--data", str(split / "train.jsonl"), "--out", str(ckpt), "--epochs", "5"]) == 0
    assert (ckpt / "config.json").exists() and (ckpt / "model.safetensors").stat().st_size < 10_000_000
    config = json.loads((ckpt / "config.json").read_text())
    assert config["residual_scale_auto"] and config["prior_alpha"] is None  # both chosen by the run itself
    summary = json.loads((ckpt / "training_summary.json").read_text())
    if config["use_prior"]:  # leave-one-out kept the cheap-feature prior: γ was chosen on the validation folds
        assert config["prior"]["alpha"] in (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0, 1000.0)
        assert summary["residual_scale_selection"]["chosen"] == config["residual_scale"]
    else:  # it found no signal in the cheap features of these 120 prompts: the paper's tower alone
        assert config["prior"] is None and "residual_scale_selection" not in summary
    capsys.readouterr()

    assert main(["score", "--router", str(ckpt), "a cat", "two dogs chasing a ball in a park"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and all(0 < r["prs"] < 1 and "prompt" not in r for r in rows)

    (split / "prompts.txt").write_text("\n".join(f"a photo of {i} apples on a table" for i in range(1, 41)))
    assert main(["calibrate", "--router", str(ckpt), "--prompts", str(split / "prompts.txt"), "--rho", "0.25"]) == 0
    calibration = json.loads(capsys.readouterr().out)
    assert calibration["alpha"] <= 0.5 and calibration["cloud_fraction"] <= 0.25

    out = split / "eval.json"
    args = ["evaluate", "--test", str(split / "test.jsonl"), "--router", str(ckpt), "--json", str(out),
            "--methods", "random", "oracle", "--bootstrap", "50", "--plot", str(split / "dp.png"),
            "--train", str(split / "train.jsonl")]  # fmt: skip
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert set(result["methods"]) == {"random", "oracle", "routet2i"}
    assert result["n_prompts"] == 60 and "0.5" in result["methods"]["routet2i"]["delta_p"]
    assert result["methods"]["oracle"]["auc"] >= result["methods"]["routet2i"]["auc"]
    assert (split / "dp.png").stat().st_size > 1000


@pytest.mark.slow
def test_train_keeps_a_zero_tower_weight_and_ridge_strength_when_given(split):
    ckpt = split / "fixed"
    args = ["train", "--data", str(split / "train.jsonl"), "--out", str(ckpt), "--epochs", "2", "--members", "2",
            "--residual-scale", "0", "--prior-alpha", "0"]  # fmt: skip
    assert main(args) == 0
    config = json.loads((ckpt / "config.json").read_text())
    assert config["residual_scale"] == 0 and not config["residual_scale_auto"]
    assert config["prior_alpha"] == 0 and config["prior"]["alpha"] == 0
    assert "residual_scale_selection" not in json.loads((ckpt / "training_summary.json").read_text())


def test_evaluate_kfold_json_contract(split, tmp_path, capsys):
    out = tmp_path / "kfold.json"
    code = main(["evaluate", "--data", str(split / "train.jsonl"), "--folds", "3", "--methods", "random",
                 "noun_count", "oracle", "--json", str(out), "--bootstrap", "20"])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["folds"] == 3 and result["n_prompts"] == 120 and result["dims"] == ["alignment"]
    oracle = result["methods"]["oracle"]
    assert set(oracle) >= {"delta_p", "delta_p_std", "cloud_call_reduction", "auc"}
    assert oracle["delta_p"]["0"] == 0 and oracle["delta_p"]["1"] == pytest.approx(100)
    assert "| oracle |" in capsys.readouterr().out


def test_evaluate_needs_data(capsys):
    assert main(["evaluate"]) == 2
    assert "--data" in capsys.readouterr().err

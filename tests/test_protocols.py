"""The train/test protocols: several training sets on one scale, test prompts never trained on, and a
checkpoint scored on a pair with no training data — as library calls and through `routet2i evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from router_model.lab.data import RoutingExample, append_examples, import_agiqa3k, import_genai_bench
from router_model.lab.protocols import checkpoint_methods
from router_model.lab.ratings import prompt_key
from router_model.lab.training_sets import (
    MERGED_METRIC,
    drop_test_prompts,
    merge_training_sets,
    single_pair_view,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ALWAYS = ["random", "noun_count", "prompt_length", "oracle"]


def _ex(prompt: str, edge: str, cloud: str, q_e: list[float], q_c: list[float], metrics: list[str], source: str):
    return RoutingExample(prompt=prompt, edge_model=edge, cloud_model=cloud, metrics=metrics, q_edge=q_e,
                          q_cloud=q_c, source=source)  # fmt: skip


def test_one_training_set_passes_unchanged_and_several_share_a_scale_per_source():
    a = [_ex(f"a{i}", "x", "y", [1.0 + i], [3.0], ["m"], "one") for i in range(3)]
    b = [_ex(f"b{i}", "y", "z", [3.0], [40.0 + i], ["m"], "two") for i in range(3)]
    assert merge_training_sets([a, []]) == a
    merged = merge_training_sets([a, b])
    assert [ex.metrics for ex in merged] == [["m"]] * 6 and merged[0].edge_model == "x"
    for part in (merged[:3], merged[3:]):  # z-scored within each source: mean 0 over edge and cloud values
        values = [v for ex in part for v in ex.q_edge + ex.q_cloud]
        assert sum(values) == pytest.approx(0.0, abs=1e-9)

    c = [_ex("c", "u", "v", [1.0, 5.0], [2.0, 7.0], ["p", "q"], "three")]
    mixed = merge_training_sets([a, c])
    assert {tuple(ex.metrics) for ex in mixed} == {(MERGED_METRIC,)}
    assert mixed[-1].q_edge == [-1.0] and mixed[-1].q_cloud == [1.0]  # mean of the two metrics' z-scores


def test_test_prompts_are_dropped_by_normalised_text():
    train = [_ex(p, "x", "y", [1.0], [2.0], ["m"], "s") for p in ("A red  Cat", "a dog", "a cow")]
    test = [_ex("a red cat", "x", "y", [1.0], [2.0], ["m"], "s")]
    kept, dropped = drop_test_prompts(train, test)
    assert dropped == 1 and [ex.prompt for ex in kept] == ["a dog", "a cow"]


def test_pair_only_methods_see_one_generic_pair():
    one = [_ex("a", "x", "y", [1.0], [2.0], ["m"], "s")] * 2
    assert single_pair_view(one) == one
    two = one + [_ex("b", "y", "z", [1.0], [2.0], ["m"], "s")]
    assert {(ex.edge_model, ex.cloud_model) for ex in single_pair_view(two)} == {("edge", "cloud")}


def test_checkpoint_only_runs_the_four_training_free_methods():
    run, skipped = checkpoint_methods(["random", "knn", "routet2i", "zooter"])
    assert run == ALWAYS and skipped == ["knn", "zooter"]


# ---------------------------------------------------------------- through the CLI, on public ratings


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    if not (DATA / "genai_bench_ratings.json").exists() or not (DATA / "agiqa3k_mos.csv").exists():
        pytest.skip(f"public ratings not found under {DATA}")
    root = tmp_path_factory.mktemp("protocols")
    genai = import_genai_bench(DATA / "genai_bench_ratings.json", "SDXL_2_1", "DALLE_3")
    sdxl = import_genai_bench(DATA / "genai_bench_ratings.json", "SDXL_2_1", "SDXL_Base")
    agiqa = import_agiqa3k(DATA / "agiqa3k_mos.csv", "sd1.5_normal", "xl2.2_normal")
    append_examples(root / "a.jsonl", genai[:40])
    append_examples(root / "b.jsonl", sdxl[30:60])  # another pair sharing SD2.1, 10 prompts also in the test
    append_examples(root / "c.jsonl", agiqa[:30])  # another data set with two metrics
    append_examples(root / "test.jsonl", genai[50:80])
    return root


@pytest.mark.slow
def test_train_on_several_sets_drops_the_test_prompts(files, capsys):
    out = files / "transfer.json"
    methods = ["random", "prompt_length", "zooter", "knn", "matrix_factorization", "oracle"]
    args = ["evaluate", "--train", str(files / "a.jsonl"), str(files / "b.jsonl"), str(files / "c.jsonl"),
            "--test", str(files / "test.jsonl"), "--methods", *methods, "--bootstrap", "50", "--json", str(out),
            "--markdown", str(files / "transfer.md")]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    test_keys = {prompt_key(ex.prompt) for ex in import_genai_bench(DATA / "genai_bench_ratings.json",
                                                                     "SDXL_2_1", "DALLE_3")[50:80]}  # fmt: skip
    sdxl = import_genai_bench(DATA / "genai_bench_ratings.json", "SDXL_2_1", "SDXL_Base")[30:60]
    overlap = sum(prompt_key(ex.prompt) in test_keys for ex in sdxl)
    assert overlap >= 5
    result = json.loads(out.read_text())
    assert result["mode"] == "train-test" and result["n_prompts"] == 30
    assert result["n_train_dropped"] == overlap and result["train_set_sizes"] == [40, 30, 30]
    assert result["n_train_prompts"] == 100 - overlap
    assert f"dropped {overlap} training example(s)" in printed
    assert list(result["methods"]) == methods
    for m in result["methods"].values():
        assert set(m) >= {"delta_p", "auc"} and "0.5" in m["delta_p"]
    boot, length = result["bootstrap"], result["bootstrap_prompt_length"]
    assert boot["method"] in ("zooter", "knn", "matrix_factorization")  # no routet2i: the best learned method
    assert result["methods"][boot["method"]]["delta_p"]["0.5"] == max(
        result["methods"][m]["delta_p"]["0.5"] for m in ("zooter", "knn", "matrix_factorization")
    )
    assert length["method"] == boot["method"] and length["baseline"] == "prompt_length"
    assert length["delta_p_0.5"]["ci_low"] <= length["delta_p_0.5"]["ci_high"]
    page = (files / "transfer.md").read_text()
    assert "dropped as test prompts" in page and "− prompt_length**" in page


@pytest.mark.slow
def test_checkpoint_on_a_pair_with_no_training_data(files, capsys):
    from router_model.lab.baselines import make_router
    from router_model.lab.data import read_examples

    ckpt = files / "router"
    make_router("routet2i", train_kwargs={"epochs": 3}).fit(read_examples(files / "a.jsonl")).router.save_pretrained(
        ckpt
    )
    out = files / "checkpoint.json"
    assert main(["evaluate", "--router", str(ckpt), "--test", str(files / "c.jsonl"), "--bootstrap", "50",
                 "--json", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert list(result["methods"]) == [*ALWAYS, "routet2i"]
    assert result["mode"] == "checkpoint" and result["n_train_prompts"] == 0
    assert "knn" in result["skipped"] and "zooter" in result["skipped"] and "routet2i" not in result["skipped"]
    assert "skipped (they need training data" in printed
    assert result["bootstrap"]["method"] == "routet2i" and result["bootstrap_prompt_length"]["method"] == "routet2i"
    assert result["dims"] == ["quality", "alignment"] and 0 <= result["methods"]["routet2i"]["auc"] <= 200


def test_evaluate_without_training_data_or_checkpoint_is_refused(files, capsys):
    assert main(["evaluate", "--test", str(files / "test.jsonl")]) == 2
    assert "--router DIR --test" in capsys.readouterr().err


@pytest.mark.slow
def test_prompt_states_encode_each_prompt_once_for_a_loop_of_transfers(files):
    from router_model.lab.data import read_examples
    from router_model.lab.protocols import PromptStates, evaluate_transfer

    sets = {name: read_examples(files / f"{name}.jsonl") for name in ("a", "b", "c", "test")}
    cache = PromptStates(list(sets.values()))
    assert len(cache.row) == len({ex.prompt for s in sets.values() for ex in s})
    quiet = {"methods": ["prompt_length", "knn", "oracle"], "bootstrap": 0, "log": None}
    cached = evaluate_transfer([sets["a"], sets["b"]], sets["test"], prompt_states=cache, **quiet)
    fresh = evaluate_transfer([sets["a"], sets["b"]], sets["test"], **quiet)
    assert cached["n_train_dropped"] == fresh["n_train_dropped"] > 0
    for name in ("prompt_length", "oracle"):
        assert cached["methods"][name]["delta_p"] == fresh["methods"][name]["delta_p"]
    assert cached["methods"]["knn"]["auc"] == pytest.approx(fresh["methods"]["knn"]["auc"], abs=1.0)
    with pytest.raises(KeyError, match="not encoded"):
        PromptStates([sets["a"]]).of(sets["test"])

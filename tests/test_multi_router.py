"""Model ids, rated-prompt import, cheap features, the many-model router and the LODO protocol."""

import gzip

import numpy as np
import pytest

from router_model.features import FEATURE_NAMES, prompt_features
from router_model.lab.ratings import (
    NATURAL_PAIRS,
    RatedPrompt,
    normalisation,
    read_jsonl,
    read_long_csv,
    to_pair_examples,
    write_jsonl,
)
from router_model.lab.train_multi import PromptInputs, train_multi
from router_model.model_ids import canonical_id
from router_model.multi_router import MultiRouter, MultiRouterConfig


@pytest.mark.parametrize(
    "name,cid",
    [
        ("SDXL_2_1", "sd-2.1"), ("DALLE_3", "dall-e-3"), ("DALLE3", "dall-e-3"), ("xl2.2_normal", "sdxl"),
        ("SDXL", "sdxl"), ("sd1.5_normal", "sd-1.5"), ("sd1dot5", "sd-1.5"), ("stable_diffusion_v1_5", "sd-1.5"),
        ("MJ", "midjourney"), ("Midjourney_6", "midjourney"), ("SD1.4", "sd-1.4"), ("SDXL-Turbo", "sdxl-turbo"),
        ("SDXL_Turbo", "sdxl-turbo"), ("SD-Turbo", "sd-turbo"), ("IF-XL", "deepfloyd-if-xl"),
        ("DeepFloyd_I_XL_v1", "deepfloyd-if-xl"), ("DALLE2_normal", "dall-e-2"), ("DALLE", "dall-e-2"),
    ],
)  # fmt: skip
def test_aliases_map_to_canonical_ids(name, cid):
    assert canonical_id(name, "any") == cid


def test_unknown_models_stay_dataset_scoped():
    assert canonical_id("stable-diffusion", "aigciqa2023") == "aigciqa2023:stable-diffusion"
    assert canonical_id("sd1.5_lowstep", "agiqa3k") == "agiqa3k:sd1.5_lowstep"
    assert canonical_id("aigciqa2023:stable-diffusion") == "aigciqa2023:stable-diffusion"


def _write_long(path, rows, gz=False):
    text = "prompt_id,prompt,model,dimension,score,rater,image\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8", newline="") as fh:
            fh.write(text)
    else:
        path.write_text(text)


@pytest.mark.parametrize("gz", [False, True])
def test_long_format_aggregates_mean_per_prompt_model_dimension(tmp_path, gz):
    path = tmp_path / ("x.csv.gz" if gz else "x.csv")
    rows = [
        ("", "A cat", "SD1.4", "aligned", 1, "r1", "i1"),
        ("", "a  CAT", "SD1.4", "aligned", 0, "r2", "i2"),  # same prompt after folding
        ("", "A cat", "SD2.1", "aligned", 1, "r1", "i3"),
        ("", "A cat", "SD2.1", "seconds", 0.5, "", ""),
        ("", "a dog", "SD1.4", "aligned", 0, "r1", "i4"),
    ]
    _write_long(path, rows, gz)
    items = {it.key: it for it in read_long_csv(path, "seetrue")}
    assert set(items) == {"a cat", "a dog"}
    assert items["a cat"].scores == {"sd-1.4": {"aligned": 0.5}, "sd-2.1": {"aligned": 1.0, "seconds": 0.5}}
    assert "seconds" not in normalisation(list(items.values()))  # a cost, never a quality target
    ex = to_pair_examples(list(items.values()), NATURAL_PAIRS["seetrue"])
    assert len(ex) == 1 and ex[0].q_edge == [0.5] and ex[0].q_cloud == [1.0]


def test_rated_prompt_jsonl_round_trip(tmp_path):
    items = [RatedPrompt("a cat", "genai", {"sd-2.1": {"alignment": 2.0}, "dall-e-3": {"alignment": 4.5}})]
    write_jsonl(tmp_path / "r.jsonl", items)
    assert read_jsonl(tmp_path / "r.jsonl") == items


def test_prompt_features_markers():
    x = prompt_features(['Three red apples to the left of a cup, with a sign that says "hi"', "a cat"])
    assert x.shape == (2, len(FEATURE_NAMES))
    col = {n: i for i, n in enumerate(FEATURE_NAMES)}
    for name in ("log_counting", "log_spatial", "log_attribute", "log_text"):
        assert x[0, col[name]] > 0 and x[1, col[name]] == 0
    assert x[0, col["log_words"]] > x[1, col["log_words"]] and x[1, col["log_nouns"]] > 0
    assert prompt_features(["no people, without cars"])[0, col["log_negation"]] > 0


def _planted(n=400, seed=0):
    """Two datasets; on each, the cloud's gain over the edge grows with feature 0 (a planted signal)."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, len(FEATURE_NAMES))).astype(np.float32)
    prompts = [f"prompt number {i}" for i in range(n)]
    inputs = PromptInputs(feats, np.zeros((n, 4), np.float32), np.full(n, 5.0), {p: i for i, p in enumerate(prompts)})
    sets = {}
    for d, (lo, hi) in enumerate([(0, n // 2), (n // 2, n)]):
        items = []
        for i in range(lo, hi):
            base = rng.normal()
            items.append(
                RatedPrompt(prompts[i], f"set{d}", {
                    "sd-2.1": {"q": base + rng.normal(scale=0.1)},
                    "dall-e-3": {"q": base + 1.0 + feats[i, 0] + rng.normal(scale=0.1)},
                })
            )  # fmt: skip
        sets[f"set{d}"] = items
    return sets, inputs, prompts


def test_training_learns_a_planted_gap_and_round_trips(tmp_path):
    sets, inputs, prompts = _planted()
    model, summary = train_multi(sets, inputs, MultiRouterConfig(use_embedding=False, rank=4), seed=0)
    rows = inputs.rows(prompts)
    truth = inputs.features[rows, 0]
    pair = model.advantage_from_inputs(inputs.features[rows], None, inputs.tokens[rows], "SDXL_2_1", "DALLE_3")
    generic = model.advantage_from_inputs(inputs.features[rows], None, inputs.tokens[rows], "x:edge", "y:cloud")
    assert pair.head == "pair" and generic.head == "generic"
    assert np.corrcoef(pair.advantage, truth)[0, 1] > 0.9
    assert np.corrcoef(generic.advantage, truth)[0, 1] > 0.9
    model.save_pretrained(tmp_path / "ckpt")
    back = MultiRouter.from_pretrained(tmp_path / "ckpt")
    again = back.advantage_from_inputs(inputs.features[rows], None, inputs.tokens[rows], "sd-2.1", "dall-e-3")
    np.testing.assert_allclose(again.advantage, pair.advantage, rtol=1e-5, atol=1e-6)
    assert back.config.models == ["dall-e-3", "sd-2.1"] and back.config.feature_names == list(FEATURE_NAMES)
    size = sum(f.stat().st_size for f in (tmp_path / "ckpt").iterdir())
    assert size < 10 * 2**20


def test_lodo_and_kfold_never_train_on_a_test_prompt():
    from router_model.lab import lodo as lodo_mod

    sets, inputs, prompts = _planted(n=60)
    pair = NATURAL_PAIRS["seetrue"]
    held = [
        RatedPrompt(p, "seetrue", {"sd-1.4": {"aligned": float(i % 3)}, "sd-2.1": {"aligned": 1.0}})
        for i, p in enumerate(prompts[:20])
    ]
    sets["seetrue"] = held  # its prompts also appear in set0: they must vanish from training
    seen: list[set[str]] = []

    def spy(train, test_prompts, p):
        keys = {it.key for items in train.values() for it in items}
        seen.append(keys & {" ".join(t.lower().split()) for t in test_prompts})
        assert p == pair
        return np.arange(len(test_prompts), dtype=float), "-"

    lodo_mod.lodo(sets, inputs, {"spy": spy}, ["seetrue"])
    lodo_mod.kfold(sets, inputs, {"spy": spy}, "seetrue", k=4)
    assert len(seen) == 5 and all(not s for s in seen)


def test_ridge_design_learns_the_planted_gap_and_round_trips(tmp_path):
    from router_model.lab.train_multi import train_on_sets

    sets, inputs, prompts = _planted()
    model = train_on_sets(sets, "ridge", inputs, alpha=0.1, use_embedding=False, length_blend=1.0)
    rows = inputs.rows(prompts)
    out = model.advantage_from_inputs(inputs.features[rows], None, inputs.tokens[rows], "sd-2.1", "dall-e-3")
    assert out.head == "generic" and model.config.head.startswith("ridge")
    assert np.corrcoef(out.advantage, inputs.features[rows, 0])[0, 1] > 0.9
    model.save_pretrained(tmp_path / "r")
    back = MultiRouter.from_pretrained(tmp_path / "r")
    again = back.advantage_from_inputs(inputs.features[rows], None, inputs.tokens[rows], "sd-2.1", "dall-e-3")
    np.testing.assert_allclose(again.advantage, out.advantage, rtol=1e-5, atol=1e-6)


def test_feature_subset_keeps_order_and_skips_nouns():
    names = ("log_text", "log_words")
    x = prompt_features(['a sign that says "hi"', "a cat"], names=names)
    full = prompt_features(['a sign that says "hi"', "a cat"])
    np.testing.assert_array_equal(x, full[:, [FEATURE_NAMES.index(n) for n in names]])
    with pytest.raises(ValueError):
        prompt_features(["a cat"], names=("bogus",))

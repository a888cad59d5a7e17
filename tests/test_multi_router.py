"""Model ids, rated-prompt import, cheap features, the many-model router and the LODO protocol."""

import gzip

import numpy as np
import pytest
import torch

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


# ---------------------------------------------------------------- the "moe" tower (the paper's MoE over token states)


@pytest.fixture(scope="module")
def tiny_states_encoder(tmp_path_factory):
    from router_model.encoder import TextEncoder
    from tests.test_model import build_tiny_text_encoder

    return TextEncoder(str(build_tiny_text_encoder(tmp_path_factory.mktemp("moe_bert"))), device="cpu")


def _planted_words(encoder, n=240, seed=0):
    """Two datasets; the cloud gains iff the prompt names a zebra (not a giraffe): a signal only in the tokens
    (same word count, no feature marker), so only the token-state tower can find it."""
    rng = np.random.default_rng(seed)
    words = ["dusk", "meadow", "harbor", "forest", "castle", "valley"]
    prompts, planted = [], []
    for i in range(n):
        zebra = i % 2 == 0
        prompts.append(f"a {'zebra' if zebra else 'giraffe'} near the {words[i % 6]} number {i}")
        planted.append(1.0 if zebra else 0.0)
    states = encoder.encode(prompts)
    feats = prompt_features(prompts)
    inputs = PromptInputs(feats, states.mean_pooled().numpy(), states.mask.sum(1).numpy(),
                          {" ".join(p.lower().split()): i for i, p in enumerate(prompts)})  # fmt: skip
    sets = {}
    for d, (lo, hi) in enumerate([(0, n // 2), (n // 2, n)]):
        sets[f"set{d}"] = [
            RatedPrompt(prompts[i], f"set{d}", {
                "sd-2.1": {"q": (base := rng.normal()) + rng.normal(scale=0.1)},
                "dall-e-3": {"q": base + 2.0 * planted[i] + rng.normal(scale=0.1)},
            })
            for i in range(lo, hi)
        ]  # fmt: skip
    return sets, inputs, states, prompts, np.array(planted)


def _moe_config(**kw) -> MultiRouterConfig:
    base = dict(tower="moe", feature_names=["log_words"], rank=4, moe_experts=2, top_k=3, low_rank=4, moe_hidden=8,
                dropout=0.0)  # fmt: skip
    return MultiRouterConfig(**(base | kw))


def test_moe_tower_learns_a_token_signal_ranks_held_out_prompts_and_round_trips(tiny_states_encoder, tmp_path):
    sets, inputs, states, prompts, planted = _planted_words(tiny_states_encoder)
    held = set(prompts[::5])  # every fifth prompt never trained on
    train = {n: [it for it in items if it.prompt not in held] for n, items in sets.items()}
    model, summary = train_multi(train, inputs, _moe_config(), lr=1e-2, max_epochs=60, patience=15, states=states,
                                 batch_size=32)  # fmt: skip
    assert model.needs_states and summary["epochs"] > 1
    rows = inputs.rows(sorted(held))
    kw = dict(features=inputs.features[rows][:, :1], pooled=None, tokens=inputs.tokens[rows])
    out = model.advantage_from_inputs(**kw, edge_id="sd-2.1", cloud_id="dall-e-3", states=states.subset(rows))
    gen = model.advantage_from_inputs(**kw, edge_id="x:edge", cloud_id="y:cloud", states=states.subset(rows))
    assert out.head == "pair" and gen.head == "generic"
    truth = planted[rows]
    for scores in (out.advantage, gen.advantage):  # held-out zebras ranked above held-out giraffes
        assert scores[truth == 1].min() > scores[truth == 0].max()
    with pytest.raises(ValueError, match="token states"):
        model.advantage_from_inputs(**kw, edge_id="sd-2.1", cloud_id="dall-e-3")

    model.save_pretrained(tmp_path / "moe")
    back = MultiRouter.from_pretrained(tmp_path / "moe")
    assert back.config.tower == "moe" and back.needs_states
    again = back.advantage_from_inputs(**kw, edge_id="sd-2.1", cloud_id="dall-e-3", states=states.subset(rows))
    np.testing.assert_allclose(again.advantage, out.advantage, rtol=1e-5, atol=1e-6)
    # served like the linear tower: prompts in, the encoder's token states through the MoE
    back.config.encoder = tiny_states_encoder.name
    served = back.for_pair("sd-2.1", "dall-e-3").score(sorted(held))
    np.testing.assert_allclose(served.advantage, out.advantage, rtol=1e-4, atol=1e-5)


def test_moe_tower_ablation_switches_change_the_module(tiny_states_encoder):
    _, _, states, _, _ = _planted_words(tiny_states_encoder, n=8)
    names = {}
    outs = {}
    for label, kw in {"full": {}, "no_sel": {"token_selection": False}, "no_dual": {"dual_gate": False}}.items():
        torch.manual_seed(0)
        model = MultiRouter(_moe_config(embed_dim=states.states.shape[-1], **kw)).eval()
        names[label] = {n for n, _ in model.named_parameters()}
        with torch.no_grad():
            outs[label] = model.expert_vectors(states)
    assert {"moe.expert_embeddings", "moe.proj_pos", "moe.proj_neg"} <= names["full"]
    assert names["full"] - names["no_sel"] == {"moe.expert_embeddings"}
    assert names["full"] - names["no_dual"] == {"moe.proj_neg"}
    assert not torch.allclose(outs["full"], outs["no_sel"]) and not torch.allclose(outs["full"], outs["no_dual"])
    # without selection every real token is pooled with equal weight
    torch.manual_seed(0)
    no_sel = MultiRouter(_moe_config(embed_dim=states.states.shape[-1], token_selection=False)).eval()
    with torch.no_grad():
        weights, selected = no_sel.moe.gate(no_sel.moe.norm(states.states), states.mask)
    assert bool((selected.any(-1) == states.mask).all())
    torch.testing.assert_close(weights.sum(1), torch.ones_like(weights.sum(1)))


def test_linear_checkpoints_have_no_moe_weights_and_the_paper_router_keeps_its_keys():
    from router_model.model import RouterConfig, RouteT2IRouter

    linear = MultiRouter(MultiRouterConfig(use_embedding=False))
    assert not any(k.startswith("moe.") for k in linear.state_dict())
    paper = RouteT2IRouter(RouterConfig(metrics=["a", "b"], input_dim=8, members=1, use_prior=False))
    assert set(paper.state_dict()) == {
        "norm.weight", "norm.bias", "expert_embeddings", "proj_pos", "proj_neg", "scoring", "scoring_bias",
        "head_weight", "head_bias",
    }  # fmt: skip

"""The many-model router wired in: rated-file import, `evaluate --lodo`, `train --multi`, `evaluate --router` on a
multi checkpoint, and a real uvicorn gateway serving a multi checkpoint (`/route` reports the head)."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from gateway.app import create_app
from gateway.cli import main
from router_model.lab.data import read_examples
from router_model.lab.ratings import read_jsonl
from router_model.multi_router import MultiRouter, checkpoint_kind
from tests.servers import LiveServer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHIPPED = Path(__file__).resolve().parents[1] / "router_model" / "checkpoints" / "multi"
OBJECTS = ["cat", "red ball", "wooden chair", "two dogs", "blue vase", "lamp", "green apple", "clock", "book", "kite"]
LONG_HEADER = ["prompt_id", "prompt", "model", "dimension", "score", "rater", "image"]


def _prompt(set_index: int, i: int) -> tuple[str, int]:
    """A distinct prompt per (set, i) with k objects; the planted cloud gain grows with k."""
    k = 1 + (i * 7 + set_index) % 6
    objs = [OBJECTS[(i + j + set_index) % len(OBJECTS)] for j in range(k)]
    return f"scene {set_index}-{i}: " + " and ".join(objs), k


def _gain(k: int, i: int) -> float:
    return 0.5 * k + (0.3 if i % 3 == 0 else -0.3)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A tiny shared-data folder in the real formats: GenAI-Bench JSON, AGIQA-3K CSV, a long CSV (SeeTRUE)."""
    root = tmp_path_factory.mktemp("shared")
    genai = {}
    for i in range(24):
        p, k = _prompt(0, i)
        genai[str(i)] = {"id": i, "prompt": p, "models": {"SDXL_2_1": [2.0] * 3, "DALLE_3": [2.0 + _gain(k, i)] * 3}}
    (root / "genai_bench_ratings.json").write_text(json.dumps(genai))
    with (root / "agiqa3k_mos.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "prompt", "adj1", "adj2", "style", "mos_quality", "std_quality", "mos_align", "std_align"])
        for i in range(20):
            p, k = _prompt(1, i)
            w.writerow([f"sd1.5_normal_{i}.jpg", p, "", "", "", 2.0, 0.1, 2.0, 0.1])
            w.writerow([f"xl2.2_normal_{i}.jpg", p, "", "", "", 2.0 + _gain(k, i), 0.1, 2.0 + _gain(k, i), 0.1])
    (root / "ratings").mkdir()
    rows = [LONG_HEADER]
    for i in range(20):
        p, k = _prompt(2, i)
        for rater in ("r1", "r2"):
            rows += [[i, p, "SD1.4", "aligned", 0.0, rater, ""], [i, p, "SD2.1", "aligned", _gain(k, i) / 4, rater, ""],
                     [i, p, "SD2.1", "seconds", 1.5, rater, ""]]  # fmt: skip
    text = "".join(",".join(map(str, r)) + "\n" for r in rows)
    (root / "ratings" / "seetrue_t2i.csv").write_text(text)  # what load_shared reads
    with gzip.open(root / "ratings" / "seetrue_t2i.csv.gz", "wt", newline="") as fh:  # the same, compressed
        fh.write(text)
    return root


# ---- dataset import / stats ---------------------------------------------------------------------------------------
def test_import_ratings_pair_by_raw_or_canonical_name(data_dir, tmp_path, capsys):
    src = data_dir / "ratings" / "seetrue_t2i.csv.gz"
    for edge, cloud in (("SD1.4", "SD2.1"), ("sd-1.4", "sd-2.1")):
        out = tmp_path / f"{edge}.jsonl"
        assert main(["dataset", "import", "--source", "ratings", "--input", str(src), "--edge", edge,
                     "--cloud", cloud, "--out", str(out)]) == 0  # fmt: skip
        examples = read_examples(out)
        assert len(examples) == 20 and {(e.edge_model, e.cloud_model) for e in examples} == {("sd-1.4", "sd-2.1")}
        assert all(e.metrics == ["aligned"] for e in examples)  # `seconds` is a cost, never a quality metric
        assert all(e.prs is not None for e in examples) and (tmp_path / f"{edge}.prs.json").exists()
    first = {e.prompt: e for e in read_examples(tmp_path / "SD1.4.jsonl")}
    p, k = _prompt(2, 3)
    assert first[p].q_cloud == [pytest.approx(_gain(k, 3) / 4)] and first[p].q_edge == [0.0]  # mean over raters


def test_import_ratings_unknown_model_lists_the_files_models(data_dir, tmp_path, capsys):
    code = main(["dataset", "import", "--source", "ratings", "--input", str(data_dir / "ratings" / "seetrue_t2i.csv"),
                 "--edge", "sd15", "--cloud", "SD2.1", "--out", str(tmp_path / "x.jsonl")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "'sd15'" in err and "sd-1.4, sd-2.1" in err and not (tmp_path / "x.jsonl").exists()
    assert main(["dataset", "import", "--source", "ratings", "--input", str(data_dir / "ratings" / "seetrue_t2i.csv"),
                 "--out", str(tmp_path / "x.jsonl")]) == 2  # fmt: skip
    assert "--multi" in capsys.readouterr().err


def test_import_multi_and_stats_on_the_long_format(data_dir, tmp_path, capsys):
    out = tmp_path / "rated.jsonl"
    src = data_dir / "ratings" / "seetrue_t2i.csv.gz"
    assert main(["dataset", "import", "--source", "ratings", "--input", str(src), "--multi", "--out", str(out)]) == 0
    items = read_jsonl(out)
    assert len(items) == 20 and all(set(it.scores) == {"sd-1.4", "sd-2.1"} for it in items)
    assert all(it.scores["sd-2.1"]["seconds"] == 1.5 for it in items)
    capsys.readouterr()
    for path in (src, out):
        assert main(["dataset", "stats", str(path), "--json"]) == 0
        means = json.loads(capsys.readouterr().out)
        expected = np.mean([_gain(_prompt(2, i)[1], i) / 4 for i in range(20)])
        assert means["sd-2.1"]["n"] == 20 and means["sd-2.1"]["aligned"] == pytest.approx(expected)
        assert means["sd-1.4"]["aligned"] == 0.0
    assert main(["dataset", "import", "--source", "genai-bench", "--input", str(data_dir / "genai_bench_ratings.json"),
                 "--multi", "--out", str(tmp_path / "g.jsonl")]) == 0  # fmt: skip
    assert {m for it in read_jsonl(tmp_path / "g.jsonl") for m in it.scores} == {"sd-2.1", "dall-e-3"}


# ---- evaluate --lodo, train --multi, evaluate --router ------------------------------------------------------------
@pytest.fixture(scope="module")
def lodo_run(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("lodo")
    args = ["evaluate", "--lodo", "--data-dir", str(data_dir), "--cache-dir", str(root / "cache"),
            "--json", str(root / "lodo.json"), "--markdown", str(root / "lodo.md")]  # fmt: skip
    assert main(args) == 0
    return root, args


def test_lodo_json_contract_and_no_test_prompt_trained_on(lodo_run):
    root, _ = lodo_run
    result = json.loads((root / "lodo.json").read_text())
    assert result["protocol"] == "lodo" and set(result["held_out"]) == {"genai", "agiqa3k", "seetrue"}
    for name, held in result["held_out"].items():
        assert name not in held["train_sets"] and held["n_prompts"] == {"genai": 24}.get(name, 20)
        methods = held["methods"]
        assert set(methods) == {"routet2i", "prompt_length", "noun_count", "random", "oracle"}
        assert methods["routet2i"]["head"] == "generic"
        for m in methods.values():
            assert set(m["delta_p"]) >= {"0", "0.5", "1"} and np.isfinite(m["auc"])
        assert methods["oracle"]["delta_p"]["0.5"] >= max(v["delta_p"]["0.5"] for v in methods.values())
        # the planted gain grows with the number of objects, i.e. with the prompt's length
        assert methods["prompt_length"]["delta_p"]["0.5"] > methods["random"]["delta_p"]["0.5"]
    assert "| routet2i |" in (root / "lodo.md").read_text()


def test_lodo_rerun_reads_the_cache(lodo_run, monkeypatch, tmp_path):
    root, args = lodo_run
    assert len(list((root / "cache").glob("inputs-*.npz"))) == 1

    def no_encoding(*_a, **_k):
        raise AssertionError("the cached inputs should have been used")

    monkeypatch.setattr("router_model.lab.cache.encode_pooled", no_encoding)
    again = [a if a != str(root / "lodo.json") else str(tmp_path / "again.json") for a in args]
    assert main(again) == 0
    first, second = (json.loads(p.read_text()) for p in (root / "lodo.json", tmp_path / "again.json"))
    assert first["held_out"]["genai"]["methods"] == second["held_out"]["genai"]["methods"]


def test_lodo_compares_towers_in_one_run_and_fills_a_marked_block(data_dir, tmp_path):
    page = tmp_path / "ROUTER_LODO.md"
    page.write_text("# research table\nkept\n<!-- begin: routet2i evaluate lodo -->\nold\n"
                    "<!-- end: routet2i evaluate lodo -->\ntail kept\n")  # fmt: skip
    args = ["evaluate", "--lodo", "--multi-tower", "linear,moe", "--lodo-cap", "15", "--held-out", "genai,seetrue",
            "--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "cache"), "--json", str(tmp_path / "t.json"),
            "--markdown", str(page)]  # fmt: skip
    assert main(args) == 0
    result = json.loads((tmp_path / "t.json").read_text())
    assert result["method_order"][:2] == ["routet2i-linear", "routet2i-moe"] and result["train_cap"] == 15
    for name, held in result["held_out"].items():
        assert held["n_prompts"] == {"genai": 24}.get(name, 20)  # tested whole, though training sets are cut
        assert max(held["train_sets"].values()) <= 15 and name not in held["train_sets"]
        assert {"routet2i-linear", "routet2i-moe", "prompt_length", "oracle"} <= set(held["methods"])
        assert held["methods"]["routet2i-moe"]["head"] in {"pair", "generic"}
    assert len(list((tmp_path / "cache").glob("states-*.npz"))) == 1  # token states encoded once, cached
    text = page.read_text()
    assert text.startswith("# research table\nkept\n") and text.endswith("tail kept\n") and "\nold\n" not in text
    moe = result["mean"]["routet2i-moe"]
    assert "| routet2i-moe | " in text and f"{moe['delta_p_0.5']:.1f} / {moe['auc']:.1f}" in text
    assert main([*args[:3], "cnn", *args[4:]]) != 0  # an unknown tower is refused


def test_train_multi_ships_a_checkpoint_with_a_generated_card(lodo_run, data_dir, tmp_path):
    root, _ = lodo_run
    out = tmp_path / "multi"
    assert main(["train", "--multi", "--data-dir", str(data_dir), "--cache-dir", str(root / "cache"),
                 "--out", str(out), "--lodo-json", str(root / "lodo.json")]) == 0  # fmt: skip
    assert checkpoint_kind(out) == "multi" and sum(f.stat().st_size for f in out.iterdir()) < 10 * 2**20
    card = (out / "README.md").read_text()
    lodo = json.loads((root / "lodo.json").read_text())
    r = lodo["held_out"]["seetrue"]["methods"]["routet2i"]
    assert f"{r['delta_p']['0.5']:.1f} / {r['auc']:.1f}" in card  # the table comes from the result, not typed
    assert "| genai | 24 |" in card and "train --multi" in card and "evaluate --lodo" in card
    model = MultiRouter.from_pretrained(out)
    assert model.config.data == {"genai": 24, "agiqa3k": 20, "seetrue": 20}
    assert "log_nouns" not in model.config.feature_names


def test_evaluate_router_accepts_a_multi_checkpoint(data_dir, tmp_path, capsys):
    test = tmp_path / "genai.jsonl"
    assert main(["dataset", "import", "--source", "genai-bench", "--input", str(data_dir / "genai_bench_ratings.json"),
                 "--edge", "SDXL_2_1", "--cloud", "DALLE_3", "--out", str(test)]) == 0  # fmt: skip
    ckpt = _pair_checkpoint(tmp_path / "irt")
    for router, head in ((SHIPPED, "generic"), (ckpt, "pair")):
        out = tmp_path / f"{head}.json"
        assert main(["evaluate", "--router", str(router), "--test", str(test), "--json", str(out),
                     "--bootstrap", "20"]) == 0  # fmt: skip
        result = json.loads(out.read_text())
        assert result["router"] == {"kind": "multi", "edge_id": "sd-2.1", "cloud_id": "dall-e-3", "head": head}
        assert {"routet2i", "prompt_length", "noun_count", "random", "oracle"} <= set(result["methods"])
        assert "0.5" in result["methods"]["routet2i"]["delta_p"]
        assert f"scored by the {head} head" in capsys.readouterr().out


def test_score_and_calibrate_take_a_multi_checkpoint(tmp_path, capsys):
    prompts = ["a cat", "three red apples to the left of a glass vase"]
    assert main(["score", "--router", str(SHIPPED), "--edge-id", "SDXL_2_1", *prompts]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    direct = MultiRouter.from_pretrained(SHIPPED).score(prompts, "sd-2.1", "sd-3.5-large").advantage
    assert [r["head"] for r in rows] == ["generic", "generic"] and all(r["per_metric"] == {} for r in rows)
    np.testing.assert_allclose([r["advantage"] for r in rows], direct, rtol=1e-5)
    np.testing.assert_allclose([r["prs"] for r in rows], 1 / (1 + np.exp(direct)), rtol=1e-5)
    colours = ["red", "blue", "tall", "small"]
    (tmp_path / "p.txt").write_text("\n".join(f"a photo of {i} apples and a {colours[i % 4]} cup" for i in range(40)))
    assert main(["calibrate", "--router", str(SHIPPED), "--prompts", str(tmp_path / "p.txt"), "--rho", "0.25"]) == 0
    calibration = json.loads(capsys.readouterr().out)
    assert calibration["n_prompts"] == 40 and calibration["alpha"] <= 0.5 and calibration["cloud_fraction"] <= 0.25


def _pair_checkpoint(directory: Path) -> Path:
    """A tiny IRT multi checkpoint that knows sd-2.1 and dall-e-3 (so it has a pair head), no embedding input."""
    from router_model.lab.ratings import RatedPrompt
    from router_model.lab.train_multi import PromptInputs, train_multi
    from router_model.multi_router import MultiRouterConfig

    prompts = [_prompt(5, i)[0] for i in range(60)]
    inputs = PromptInputs.compute(prompts)
    items = [RatedPrompt(p, "toy", {"sd-2.1": {"q": 1.0}, "dall-e-3": {"q": 1.0 + _gain(_prompt(5, i)[1], i)}})
             for i, p in enumerate(prompts)]  # fmt: skip
    model, _ = train_multi({"toy": items}, inputs, MultiRouterConfig(use_embedding=False, rank=2), max_epochs=50)
    model.save_pretrained(directory)
    return directory


# ---- the gateway on a multi checkpoint -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def edge_model(tmp_path_factory) -> Path:
    from demo.tiny import build_tiny_sd_pipeline

    return build_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny") / "sd")


def _settings(edge_model: Path, tmp_path: Path, **overrides):
    from tests.test_gateway import make_settings

    return make_settings(edge_model, tmp_path / "state.json", jobs_db=str(tmp_path / "jobs.sqlite3"), **overrides)


def test_gateway_serves_the_shipped_multi_checkpoint(edge_model, tmp_path):
    settings = _settings(edge_model, tmp_path, router_path=str(SHIPPED))
    assert (settings.edge_model_id, settings.cloud_model_id) == ("sd-2.1", "sd-3.5-large")
    prompts = ["a cat", "three red apples to the left of a glass vase, under a sign that says 'fresh'"]
    direct = MultiRouter.from_pretrained(SHIPPED).score(prompts, "sd-2.1", "sd-3.5-large")
    with LiveServer(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        bodies = [http.post("/route", json={"prompt": p}).json() for p in prompts]
        generated = http.post("/generate", json={"prompt": prompts[0], "size": "64x64", "num_inference_steps": 2})
    assert generated.status_code == 200, generated.text
    assert all(b["head"] == "generic" and b["per_metric"] == {} for b in bodies)
    expected = 1.0 / (1.0 + np.exp(direct.advantage))  # PRŜ = σ(−advantage): the higher advantage, the lower PRŜ
    np.testing.assert_allclose([b["prs"] for b in bodies], expected, rtol=1e-4, atol=1e-6)
    assert direct.advantage[0] != direct.advantage[1]


def test_gateway_reports_the_pair_head_for_known_models(edge_model, tmp_path):
    ckpt = _pair_checkpoint(tmp_path / "irt")
    settings = _settings(edge_model, tmp_path, router_path=str(ckpt), edge_model_id="SDXL_2_1",
                         cloud_model_id="dall-e-3")  # fmt: skip
    with LiveServer(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        pair = http.post("/route", json={"prompt": "two dogs and a kite"}).json()
    assert pair["head"] == "pair" and 0 < pair["prs"] < 1
    unknown = _settings(edge_model, tmp_path, router_path=str(ckpt), cloud_model_id="some-new-model")
    with LiveServer(create_app(unknown)) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        assert http.post("/route", json={"prompt": "two dogs and a kite"}).json()["head"] == "generic"

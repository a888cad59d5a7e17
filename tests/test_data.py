import json
from pathlib import Path

import numpy as np
import pytest

from router_model.lab.data import (
    DatasetError,
    RoutingExample,
    append_examples,
    import_agiqa3k,
    import_genai_bench,
    import_jsonl,
    kfold_splits,
    label_with_prs,
    prs_stats_path,
    read_examples,
    read_prompts,
    write_dataset,
)
from router_model.prs import PRSStats

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GENAI = DATA / "genai_bench_ratings.json"
AGIQA = DATA / "agiqa3k_mos.csv"


def ex(prompt: str, qe: float = 1.0, qc: float = 2.0) -> RoutingExample:
    return RoutingExample(prompt, "e", "c", ["m"], [qe], [qc])


def test_genai_bench_import_means_of_three_raters():
    examples = import_genai_bench(GENAI, "SDXL_2_1", "DALLE_3")
    raw = json.loads(GENAI.read_text())
    assert len(examples) == len(raw) == 416
    first = raw[examples[0].id]
    assert examples[0].q_edge == [pytest.approx(np.mean(first["models"]["SDXL_2_1"]))]
    assert examples[0].ratings["cloud"] == first["models"]["DALLE_3"]
    assert examples[0].metrics == ["alignment"]


def test_agiqa_import_pairs_same_index_and_two_dimensions():
    examples = import_agiqa3k(AGIQA, "sd1.5_normal", "xl2.2_normal")
    assert len(examples) == 300 and examples[0].metrics == ["quality", "alignment"]
    rows = {line.split(",")[0]: line for line in AGIQA.read_text().splitlines()[1:]}
    e = examples[5]
    assert f"{e.q_edge[0]:.6f}" in f"{float(rows[f'sd1.5_normal_{e.id}.jpg'].split(',')[-4]):.6f}"
    assert rows[f"xl2.2_normal_{e.id}.jpg"].split(",")[1] == e.prompt


def test_unknown_model_lists_available():
    with pytest.raises(DatasetError, match="models it has: .*DALLE_3"):
        import_genai_bench(GENAI, "SD21", "DALLE_3")
    with pytest.raises(DatasetError, match="xl2.2_normal"):
        import_agiqa3k(AGIQA, "sd1.5_normal", "sdxl")


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    append_examples(path, [ex("a cat")])
    with path.open("a") as fh:
        fh.write('{"prompt": "x"}\n')
    with pytest.raises(DatasetError, match=r"d\.jsonl:2: .*missing field"):
        read_examples(path)


def test_round_trip_and_sidecar(tmp_path):
    examples = [ex(f"prompt {i}", i, 3) for i in range(5)]
    stats = label_with_prs(examples, gamma=2.0)
    write_dataset(tmp_path / "d.jsonl", examples, stats)
    back = read_examples(tmp_path / "d.jsonl")
    assert [b.prs for b in back] == [e.prs for e in examples]
    assert PRSStats.load(prs_stats_path(tmp_path / "d.jsonl")).gamma == 2.0


def test_jsonl_import_selects_pair(tmp_path):
    path = tmp_path / "own.jsonl"
    append_examples(path, [ex("a"), RoutingExample("b", "e2", "c", ["m"], [1], [1])])
    assert [e.prompt for e in import_jsonl(path, "e2", "c")] == ["b"]
    with pytest.raises(DatasetError, match="models it has: e, e2"):
        import_jsonl(path, "nope", None)


def test_kfold_groups_duplicate_prompts_and_is_deterministic():
    examples = [ex(f"prompt {i % 30}") for i in range(60)] + [ex("Prompt  3")]
    splits = kfold_splits(examples, k=5, seed=1)
    assert splits == kfold_splits(examples, k=5, seed=1)
    assert splits != kfold_splits(examples, k=5, seed=2)
    seen = []
    for train, test in splits:
        assert not set(train) & set(test)
        test_prompts = {" ".join(examples[i].prompt.lower().split()) for i in test}
        train_prompts = {" ".join(examples[i].prompt.lower().split()) for i in train}
        assert not test_prompts & train_prompts
        seen += test
    assert sorted(seen) == list(range(len(examples)))


@pytest.mark.parametrize(
    ("name", "count"),
    [("coco2014_val_captions_5k.tsv", 5000), ("parti_prompts.tsv", 1632), ("diffusiondb_refl_prompts.json", 10000)],
)
def test_read_prompt_files(name, count):
    prompts = read_prompts(DATA / name)
    assert len(prompts) == count and all(p.strip() == p and p for p in prompts)


def test_empty_prompt_file_says_so(tmp_path):
    (tmp_path / "p.txt").write_text("\n  \n")
    with pytest.raises(DatasetError, match="no prompts"):
        read_prompts(tmp_path / "p.txt")

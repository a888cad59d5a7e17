import csv
import json
from pathlib import Path

import numpy as np

from gateway.cli import main
from router_model.lab.data import read_examples

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_stats_on_raw_files_match_raw_means(capsys):
    assert main(["dataset", "stats", str(DATA / "genai_bench_ratings.json"), "--json"]) == 0
    means = json.loads(capsys.readouterr().out)
    raw = json.loads((DATA / "genai_bench_ratings.json").read_text())
    expected = np.mean([np.mean(item["models"]["DALLE_3"]) for item in raw.values()])
    assert means["DALLE_3"]["alignment"] == np.float64(expected).item()

    assert main(["dataset", "stats", str(DATA / "agiqa3k_mos.csv"), "--json"]) == 0
    means = json.loads(capsys.readouterr().out)
    rows = [r for r in csv.DictReader((DATA / "agiqa3k_mos.csv").open()) if r["name"].startswith("xl2.2_normal_")]
    assert means["xl2.2_normal"]["n"] == len(rows)
    assert abs(means["xl2.2_normal"]["quality"] - np.mean([float(r["mos_quality"]) for r in rows])) < 1e-12


def test_import_then_stats_and_analyze(tmp_path, capsys):
    out = tmp_path / "pair.jsonl"
    args = ["--input", str(DATA / "genai_bench_ratings.json"), "--edge", "SDXL_2_1", "--cloud", "DALLE_3"]
    assert main(["dataset", "import", "--source", "genai-bench", *args, "--out", str(out)]) == 0
    examples = read_examples(out)
    assert len(examples) == 416 and all(e.prs is not None for e in examples)
    assert (tmp_path / "pair.prs.json").exists()
    capsys.readouterr()
    assert main(["dataset", "stats", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    cloud_better = np.mean([e.q_cloud[0] > e.q_edge[0] for e in examples])
    assert summary["cloud_wins"] == cloud_better and summary["prompts"] == 416
    assert main(["dataset", "analyze", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| 5+ |" in table and "cloud wins" in table


def test_bad_model_is_a_clear_cli_error(tmp_path, capsys):
    code = main(
        [
            "dataset",
            "import",
            "--source",
            "agiqa3k",
            "--input",
            str(DATA / "agiqa3k_mos.csv"),
            "--edge",
            "sd15",
            "--cloud",
            "xl2.2_normal",
            "--out",
            str(tmp_path / "x.jsonl"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "models it has" in err and "sd1.5_normal" in err
    assert not (tmp_path / "x.jsonl").exists()

"""Contrastive CLIP quality metrics on a tiny random CLIP loaded through `from_pretrained`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from demo.tiny import build_tiny_clip
from router_model.quality import DEFAULT_METRICS_FILE, MetricsFileError, QualityScorer, load_metrics


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def scorer(clip_dir):
    return QualityScorer(str(clip_dir), device="cpu", batch_size=2)


def _images(n: int, size: int = 48, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def test_default_metrics_are_the_ten_pairs():
    metrics = load_metrics()
    assert [m.name for m in metrics] == [
        "definition",
        "detail",
        "clarity",
        "sharpness",
        "harmony",
        "realism",
        "color",
        "consistency",
        "layout",
        "integrity",
    ]
    assert metrics[0].positive == "High definition photo" and metrics[0].negative == "Low definition photo"
    assert "complete objects" in metrics[-1].positive and "incomplete objects" in metrics[-1].negative


def test_q_matches_softmax_over_clip_logits(scorer, clip_dir):
    """q equals the probability of m⁺ in CLIPModel.forward's own logits over the pair (m⁺, m⁻)."""
    from transformers import CLIPModel, CLIPProcessor

    images = _images(3)
    q = scorer.score(images)
    assert q.shape == (3, 10) and q.dtype == np.float64

    model = CLIPModel.from_pretrained(clip_dir).eval()
    processor = CLIPProcessor.from_pretrained(clip_dir)
    expected = np.zeros_like(q)
    with torch.no_grad():
        for j, m in enumerate(load_metrics()):
            inputs = processor(text=[m.positive, m.negative], images=images, return_tensors="pt", padding=True)
            logits = model(**inputs).logits_per_image  # [n_images, 2]
            expected[:, j] = logits.softmax(dim=-1)[:, 0].numpy()
    np.testing.assert_allclose(q, expected, atol=1e-5)
    # the random model must not make the check trivial (all q equal would hide a wrong pairing)
    assert np.ptp(q) > 1e-3


def test_q_in_open_unit_interval_and_images_of_any_mode(scorer):
    images = _images(2) + [Image.new("L", (40, 30), 128), Image.new("RGBA", (20, 64), (255, 0, 0, 100))]
    q = scorer.score(images)
    assert q.shape == (4, 10)
    assert np.all(q > 0) and np.all(q < 1)


def test_batch_equals_single_and_is_deterministic(scorer, clip_dir):
    images = _images(5, seed=1)
    batched = scorer.score(images)  # batch_size=2: batches of 2, 2, 1
    single = np.concatenate([scorer.score([im]) for im in images])
    np.testing.assert_allclose(batched, single, atol=1e-6)
    np.testing.assert_array_equal(batched, scorer.score(images))
    other = QualityScorer(str(clip_dir), device="cpu", batch_size=16)
    np.testing.assert_allclose(other.score(images), batched, atol=1e-6)
    assert scorer.score([]).shape == (0, 10)


def test_custom_metrics_file(clip_dir, tmp_path, scorer):
    path = tmp_path / "metrics.json"
    path.write_text(
        json.dumps(
            [
                {
                    "name": "integrity",
                    "positive": "Photo with complete objects",
                    "negative": "Photo with incomplete objects",
                },
                {"name": "bright", "positive": "A bright photo", "negative": "A dark photo"},
            ]
        )
    )
    custom = QualityScorer(str(clip_dir), metrics_file=str(path), device="cpu")
    assert custom.metric_names == ["integrity", "bright"]
    images = _images(2)
    q = custom.score(images)
    assert q.shape == (2, 2)
    # the same text pair gives the same q whichever file it comes from
    np.testing.assert_allclose(q[:, 0], scorer.score(images)[:, -1], atol=1e-6)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", ":1: not valid JSON"),
        ("[]", "non-empty JSON list"),
        ('{"name": "x"}', "non-empty JSON list"),
        ('[{"name": "a", "positive": "p", "negative": "n"}, "oops"]', "entry 2 is str"),
        ('[{"name": "a", "positive": "p"}]', "entry 1 ('a'): missing ['negative']"),
        ('[{"name": "a", "positive": "p", "negative": "n", "weight": 2}]', "unknown ['weight']"),
        ('[{"name": "a", "positive": "", "negative": "n"}]', "'positive' must be a non-empty string"),
        ('[{"name": "a", "positive": "same", "negative": "same"}]', "positive and negative texts are the same"),
        (
            '[{"name": "a", "positive": "p", "negative": "n"}, {"name": "a", "positive": "q", "negative": "m"}]',
            "entry 2: metric name 'a' is used twice",
        ),
    ],
)
def test_bad_metrics_file_names_file_and_entry(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(MetricsFileError) as err:
        load_metrics(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_missing_metrics_file_fails_before_loading_the_model(tmp_path):
    with pytest.raises(MetricsFileError, match="no such metrics file"):
        QualityScorer("no/such/clip", metrics_file=str(tmp_path / "absent.json"))


def test_default_file_ships_in_the_package():
    assert DEFAULT_METRICS_FILE.name == "quality_metrics.json" and DEFAULT_METRICS_FILE.is_file()

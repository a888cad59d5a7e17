"""Test-wide settings.

Tiny diffusion models on a loaded 2-core machine run ~100× slower with two torch threads fighting
over the cores than with one, so the suite uses one intra-op thread.
"""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)


REPLAY_SIZES = {"coco": 3000, "parti": 1632, "diffusiondb": 3000}


@pytest.fixture(scope="session")
def replay_scores(request) -> dict[str, np.ndarray]:
    """Stand-in PRŜ of 3,000 COCO + 1,632 Parti + 3,000 DiffusionDB prompts, in replay order (MiniLM, about a
    minute on 2 cores: cached across runs in pytest's cache). Shared by the one- and many-process replays."""
    from bench.budget_replay import DATA_DIR, DIRECTION_SEED, SCORE_SHIFT, load_segments, stand_in_scores

    if not (DATA_DIR / "parti_prompts.tsv").exists():
        pytest.skip(f"replay data not found under {DATA_DIR} (set ROUTET2I_DATA_DIR)")
    key = f"routet2i/budget_replay/{DIRECTION_SEED}-{SCORE_SHIFT}-" + "-".join(
        f"{k}{v}" for k, v in REPLAY_SIZES.items()
    )
    cache = getattr(request.config, "cache", None)
    cached = cache.get(key, None) if cache is not None else None
    if cached is not None:
        return {name: np.array(cached[name]) for name in REPLAY_SIZES}
    scores = stand_in_scores(load_segments(REPLAY_SIZES))
    if cache is not None:
        cache.set(key, {name: values.tolist() for name, values in scores.items()})
    return {name: scores[name] for name in REPLAY_SIZES}


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """A real redis-server on a free loopback port for the module's tests (tests/servers.py starts it)."""
    from tests.servers import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    """A fresh Redis key prefix per test, so tests sharing one server never see each other's keys."""
    import uuid

    return f"test-{uuid.uuid4().hex[:12]}"

"""Test-wide settings.

Tiny diffusion models on a loaded 2-core machine run ~100× slower with two torch threads fighting
over the cores than with one, so the suite uses one intra-op thread.
"""

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)

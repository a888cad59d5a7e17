"""The RouteT2I router: what the gateway loads at run time here, training and evaluation in `lab/`."""

from pathlib import Path

DEFAULT_ROUTER = Path(__file__).resolve().parent / "checkpoints" / "default"  # the shipped checkpoint

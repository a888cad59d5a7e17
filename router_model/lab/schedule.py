"""How long one router head trains, scaled by the size of its data.

The defaults (200 epochs, patience 20, batch 32, lr 1e-3) were chosen on a few hundred prompts, where an
epoch is ten optimizer steps and 20 epochs of patience are ~7,000 prompts seen. On 10k prompts an epoch
is already ~7,000 prompts: the router reaches its best validation loss within about one epoch (measured
on CEMS SD-Turbo → SDXL-Turbo), and 20 epochs of patience would train for 20 more. So from `SCALE_FROM`
training prompts on, the budget counts prompts seen instead of epochs:

- validation runs every ~`CHECK_ROWS` prompts (several checks per epoch), and early stopping waits
  `PATIENCE_ROWS` prompts without improvement (at most `patience` checks);
- training stops after ~`MAX_ROWS` prompts seen (at most `epochs` epochs);
- batches are `BATCH_SCALE` times larger, at a `BATCH_SCALE` times larger learning rate (the same
  validation curve on CEMS, fewer optimizer steps per prompt; the in-batch ranking loss sees more pairs);
- each batch runs forward in length-sorted pieces of `PIECE` prompts (see `batches.batch_logits`): the
  same batch, loss and gradient, without computing every short prompt padded to the longest one.

Below `SCALE_FROM` the schedule is the given one, unchanged (one check per epoch, whole batches).
"""

from __future__ import annotations

import dataclasses
import math

SCALE_FROM = 2000
CHECK_ROWS = 2000
PATIENCE_ROWS = 5000
MAX_ROWS = 20000
BATCH_SCALE = 2
PIECE = 16


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Epochs, validation checks per epoch, patience in checks, batch size, learning rate, and the forward's
    piece size (None: whole batches)."""

    epochs: int
    checks_per_epoch: int
    patience: int
    batch_size: int
    lr: float
    piece: int | None

    @property
    def scaled(self) -> bool:
        return self.piece is not None


def schedule_for(n_fit: int, epochs: int, patience: int, batch_size: int, lr: float, scale: bool = True) -> Schedule:
    """The schedule of a head trained on `n_fit` prompts (the module docstring says why and how)."""
    if not scale or n_fit < SCALE_FROM:
        return Schedule(epochs, checks_per_epoch=1, patience=patience, batch_size=batch_size, lr=lr, piece=None)
    checks = math.ceil(n_fit / CHECK_ROWS)
    return Schedule(
        epochs=min(epochs, math.ceil(MAX_ROWS / n_fit)),
        checks_per_epoch=checks,
        patience=max(1, min(patience, math.ceil(PATIENCE_ROWS / (n_fit / checks)))),
        batch_size=batch_size * BATCH_SCALE,
        lr=lr * BATCH_SCALE,
        piece=PIECE,
    )

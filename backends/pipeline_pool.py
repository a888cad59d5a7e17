"""Loaded pipelines shared by the local backends of one process: one load per (model, device, dtype, class).

Two arms of the same pipeline (SD2.1 at 25 steps and at 10 steps) are two `EdgeBackend`s with their own queues
and default steps; given one pool they hold the same pipeline object, loaded once. Sharing is safe because every
pipeline call on a device runs under that device's lock (`backends.edge.device_lock`), so the two never call
the pipeline at the same time. The pool counts its users and drops its reference when the last one releases it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

from backends.loading import resolve_dtype

# (model path or hub id, device, dtype as given, pipeline class or None): what `load_pipeline` takes
LoadArgs = tuple[str, str, str, str | None]


class PipelinePool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple, list[Any]] = {}  # key → [pipeline, users]

    @staticmethod
    def key(args: LoadArgs) -> tuple:
        """What makes two pipelines the same: model, device, the dtype it resolves to there, pipeline class."""
        model, device, dtype, pipeline_class = args
        return (model, device, str(resolve_dtype(dtype, torch.device(device))), pipeline_class or "")

    def acquire(self, args: LoadArgs, load: Callable[..., Any]) -> Any:
        """The pipeline `load(*args)` gives, loaded by its first user only (under the pool's lock, so two backends
        starting together load it once)."""
        key = self.key(args)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = [load(*args), 0]
            entry[1] += 1
            return entry[0]

    def release(self, pipeline: Any) -> None:
        """One user is done with `pipeline`; the last one drops the pool's reference (unknown pipelines: nothing)."""
        with self._lock:
            for key, entry in list(self._entries.items()):
                if entry[0] is pipeline:
                    entry[1] -= 1
                    if entry[1] <= 0:
                        del self._entries[key]
                    return

    def users(self, pipeline: Any) -> int:
        with self._lock:
            return next((entry[1] for entry in self._entries.values() if entry[0] is pipeline), 0)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def shared(pool: PipelinePool | None, args: LoadArgs, load: Callable[..., Any]) -> Any:
    """`load(*args)`, through `pool` when there is one."""
    return load(*args) if pool is None else pool.acquire(args, load)


def release(pool: PipelinePool | None, pipeline: Any) -> None:
    """Give `pipeline` back to `pool` (if any; a pipeline it did not load is ignored). Returns None, for
    `self.pipeline = release(...)`."""
    if pool is not None and pipeline is not None:
        pool.release(pipeline)

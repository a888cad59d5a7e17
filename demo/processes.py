"""Child processes on loopback: pick a free port, spawn, wait until /readyz answers, stop and reap.

Shared by `routet2i serve --demo`, bench/ and the tests, so every place starts and stops servers the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tie_to_parent() -> Callable[[], None] | None:
    """A `preexec_fn` after which Linux sends the child SIGTERM when this process dies, however it dies.

    uvicorn re-raises SIGTERM after its graceful shutdown, so `routet2i serve --demo` stopped by
    `docker stop`, systemd or `kill` ends without running its `finally`; the worker must not outlive it.
    libc is resolved here, in the parent, so the child only makes the one system call before exec.
    Linux ties the child to the thread that starts it: spawn from a long-lived thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl, parent = ctypes.CDLL(None, use_errno=True).prctl, os.getpid()

    def tie() -> None:
        prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # this process died before the prctl
            os._exit(1)

    return tie


def spawn(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    log: Path | None = None,
    tie_to_parent: bool = False,
) -> subprocess.Popen:
    """Start `command` (output to `log` when given, else inherited); with `tie_to_parent` it dies with this process."""
    out = log.open("w") if log is not None else None
    try:
        return subprocess.Popen(
            list(command), env=None if env is None else dict(env), cwd=cwd, stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            preexec_fn=_tie_to_parent() if tie_to_parent else None,
        )  # fmt: skip
    finally:
        if out is not None:
            out.close()  # the child holds its own descriptor


def reap_when_exits(process: subprocess.Popen) -> subprocess.Popen:
    """Wait for `process` in a daemon thread, so that it is reaped as soon as it exits, however it dies (a
    SIGKILLed worker would otherwise stay <defunct> for as long as this process runs). `stop` still works."""
    threading.Thread(target=process.wait, name=f"reap-{process.pid}", daemon=True).start()
    return process


def _log_tail(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    return ":\n" + log.read_text(errors="replace")[-3000:]


def wait_until_ready(
    url: str, process: subprocess.Popen, *, timeout_s: float = 180.0, log: Path | None = None
) -> subprocess.Popen:
    """Return `process` once GET {url}/readyz answers 200; raise RuntimeError (with the log's tail) if it exits
    first or takes longer than `timeout_s`, stopping it in that case."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with status {process.returncode}{_log_tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process
        time.sleep(0.2)
    stop(process)
    raise RuntimeError(f"{url}: not ready after {timeout_s:.0f} s{_log_tail(log)}")


def stop(*processes: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """SIGTERM every process that still runs, wait for each (SIGKILL after `timeout_s`), reap them all."""
    running = [p for p in processes if p.poll() is None]
    for process in running:
        process.terminate()
    for process in running:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

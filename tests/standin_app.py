"""`uvicorn tests.standin_app:app --factory`: a real gateway process (settings from ROUTET2I_*) whose router and
backends are the instant stand-ins, for tests that kill and restart gateway processes.

STANDIN_DELAY_S: seconds each generation takes; STANDIN_LOG: a file that gets one line (the seed) per finished
generation, appended atomically, so a test can count how often each job was generated across processes.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from gateway.app import create_app
from gateway.settings import Settings
from tests.standins import HashScorer, InstantBackend


class LoggingBackend(InstantBackend):
    def __init__(self, name: str, delay_s: float, log: str | None):
        super().__init__(name, delay_s)
        self.fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if log else None

    async def generate(self, request):
        result = await super().generate(request)
        if self.fd is not None:
            os.write(self.fd, f"{request.seed}\n".encode())
        return result


def app() -> FastAPI:
    delay, log = float(os.environ.get("STANDIN_DELAY_S", "0")), os.environ.get("STANDIN_LOG")
    return create_app(
        Settings(), router=HashScorer(), edge=LoggingBackend("edge", delay, log),
        cloud=LoggingBackend("cloud", delay, log),
    )  # fmt: skip

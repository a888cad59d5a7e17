"""A local webhook receiver for tests: a real HTTP server that checks every signature and records deliveries."""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass, field

from fastapi import FastAPI, Request, Response

from gateway.jobs.webhooks import ATTEMPT_HEADER, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify


@dataclass
class Delivery:
    job_id: str
    attempt: int
    valid: bool
    body: dict


@dataclass
class Receiver:
    secret: str
    fail_first: int = 0  # answer 500 to the first N attempts of every job
    deliveries: list[Delivery] = field(default_factory=list)
    seen: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            raw = await request.body()
            h = request.headers
            valid = verify(self.secret, h.get(TIMESTAMP_HEADER, ""), raw, h.get(SIGNATURE_HEADER, ""))
            job_id = h.get(ID_HEADER, "")
            with self.lock:
                self.seen[job_id] += 1
                failing = self.seen[job_id] <= self.fail_first
                self.deliveries.append(Delivery(job_id, int(h.get(ATTEMPT_HEADER, "0")), valid, json.loads(raw)))
            return Response(status_code=500 if failing else 204)

        return app

    def delivered(self) -> dict[str, Delivery]:
        """The last delivery of every job."""
        with self.lock:
            return {d.job_id: d for d in self.deliveries}

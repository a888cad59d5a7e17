"""Async jobs: POST /v1/jobs → 202 with the job's id, GET /v1/jobs/{id} for its status and result, DELETE cancels.

The work is in gateway/jobs/ (`JobRunner`); a job's result is exactly what POST /generate answers.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Annotated

import redis
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import Field

from gateway.api.auth import ClientDep, ClientsDep, keyed
from gateway.api.idempotent import idempotent
from gateway.api.routes.generate import ERRORS, generate_response, serve_request
from gateway.jobs import Execute, JobFailed, JobRunner
from gateway.jobs.model import Job, view
from gateway.keys import ApiKey, ClientRefused
from gateway.schemas import GenerateRequest
from gateway.serving import GatewayError

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


class JobRequest(GenerateRequest):
    webhook_url: str | None = Field(
        default=None, max_length=2000, pattern=r"^https?://", description="Signed POST when the job ends."
    )


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """The job store unreachable (Redis away, SQLite locked too long) → 503, not 500."""
    try:
        yield
    except (redis.RedisError, sqlite3.Error) as exc:
        raise HTTPException(503, "the job store is unavailable", headers={"Retry-After": "2"}) from exc


def get_jobs(request: Request) -> JobRunner:
    if not hasattr(request.app.state, "jobs"):
        raise HTTPException(503, "the gateway is starting", headers={"Retry-After": "5"})
    return request.app.state.jobs


JobsDep = Annotated[JobRunner, Depends(get_jobs)]


def _owned(job: Job | None, client: ApiKey | None) -> Job:
    """404 for no such job, and for a job another key submitted (ids of others' jobs do not leak)."""
    if job is None or (job["client"] is not None and (client is None or client.name != job["client"])):
        raise HTTPException(404, "no such job (finished jobs are kept for jobs_ttl_s)")
    return job


@router.post("", status_code=202, responses={**ERRORS, 202: {"description": "Accepted: {id, status, status_url}"}})
async def submit(body: JobRequest, request: Request, jobs: JobsDep, client: ClientDep, clients: ClientsDep) -> Response:
    """Queue a generation (the /generate body plus an optional `webhook_url`); persisted before the 202."""
    if body.webhook_url is not None and jobs.webhook_secret is None:
        raise HTTPException(422, "webhooks need a signing key: set ROUTET2I_WEBHOOK_SECRET")
    generation = GenerateRequest.model_validate(body.model_dump(exclude={"webhook_url"}, exclude_unset=True))

    async def produce() -> JSONResponse:
        keyed(clients, client, serve_request(generation), private_given=False)  # 403 / 429 now, not in the job
        stored = generation.model_dump(mode="json", exclude_unset=True)
        with store_errors():
            job = await jobs.submit(stored, client=client.name if client else None, webhook_url=body.webhook_url)
        url = f"{str(request.base_url).rstrip('/')}/v1/jobs/{job['id']}"
        return JSONResponse({"id": job["id"], "status": job["status"], "status_url": url}, status_code=202,
                            headers={"Location": url})  # fmt: skip

    # Accepting a job takes milliseconds: a replica killed while accepting holds the key for 30 s at most.
    return await idempotent(request, client, body.model_dump(mode="json"), produce, pending_s=30)


@router.get("/{job_id}")
async def status(job_id: str, jobs: JobsDep, client: ClientDep) -> dict:
    """`{id, status, result | error, runs, webhook: {url, state, attempts}}`; status is queued, running,
    succeeded, failed or canceled, and `result` is the body POST /generate returns."""
    with store_errors():
        return view(_owned(await jobs.get(job_id), client))


@router.delete("/{job_id}")
async def cancel(job_id: str, jobs: JobsDep, client: ClientDep) -> dict:
    """Cancel: a queued job never runs; a running one's result is dropped. 409 once it has finished."""
    with store_errors():
        _owned(await jobs.get(job_id), client)
        outcome = await jobs.cancel(job_id)
    if outcome is None:
        raise HTTPException(404, "no such job")
    if outcome != "canceled":
        raise HTTPException(409, f"the job has already {outcome}")
    with store_errors():
        return view(await jobs.get(job_id) or {})


def job_executor(app: FastAPI) -> Execute:
    """What a worker runs for a job: the /generate path under the job's key (its quotas counted at submission)."""

    async def execute(body: dict, client_name: str | None) -> dict:
        gw = getattr(app.state, "gateway", None)
        if gw is None:
            raise JobFailed({"status": 503, "detail": "the gateway is starting"}, retry=True)
        clients = app.state.clients
        key = None
        if client_name is not None:
            key = next((k for k in clients.registry.all() if k.name == client_name), None)
            if key is None:
                raise JobFailed({"status": 401, "detail": "the API key of this job was revoked"})
        try:
            answer, _ = await generate_response(GenerateRequest.model_validate(body), gw, clients, key, admit=False)
        except GatewayError as exc:
            raise JobFailed({"status": exc.status, "detail": exc.detail, "kind": exc.kind},
                            retry=exc.status == 503) from exc  # fmt: skip
        except ClientRefused as exc:
            raise JobFailed({"status": exc.status, "detail": exc.detail}, retry=exc.status == 503) from exc
        return answer.model_dump(mode="json")

    return execute

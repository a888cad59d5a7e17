"""Client keys in the HTTP API: the `ClientDep` dependency (401) and the per-key request shaping (403, 429)."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from gateway.api.deps import BearerDep
from gateway.keys import ApiKey, ClientGate, ClientRefused
from gateway.serving import ServeRequest


async def get_clients(request: Request) -> ClientGate:
    return request.app.state.clients


ClientsDep = Annotated[ClientGate, Depends(get_clients)]


async def get_client(clients: ClientsDep, credentials: BearerDep) -> ApiKey | None:
    """The caller's key (None: anonymous on an open gateway); 401 when a key is required and not valid.
    A bearer token is looked up in the thread pool (the registry may be Redis); no token needs no lookup."""
    if credentials is None:
        return clients.authenticate(None)
    return await run_in_threadpool(clients.authenticate, credentials.credentials)


ClientDep = Annotated[ApiKey | None, Depends(get_client)]


def keyed(
    clients: ClientGate, key: ApiKey | None, job: ServeRequest, *, private_given: bool, admit: bool = True
) -> ServeRequest:
    """Count the request against the key's quotas (429; `admit=False`: counted already, when its job was accepted)
    and apply its arms (403), private default and cloud share."""
    if key is None:
        return job
    if job.route != "auto" and job.route not in key.allowed_arms:
        raise ClientRefused(403, f"key {key.name!r} may not use the {job.route} backend")
    if admit:
        clients.admit(key, job.generation.n)
    private = job.private if private_given else (job.private or key.private)
    return replace(job, private=private, cloud_gate=clients.cloud_gate(key))

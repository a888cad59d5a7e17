"""Client keys for the admin: create (the key is shown once), list (no secrets, with usage), revoke."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Depends, HTTPException, Request
from redis import RedisError

from gateway.api.auth import ClientsDep
from gateway.api.deps import require_admin
from gateway.keys import ApiKey, KeyCreate, KeyExists, hash_key, new_key

router = APIRouter(prefix="/admin/keys", tags=["admin"], dependencies=[Depends(require_admin)])
audit = logging.getLogger("routet2i.audit")


def _client_host(request: Request) -> str:
    return request.client.host if request.client else "?"


@router.post("", status_code=201)
async def create_key(body: KeyCreate, request: Request, clients: ClientsDep) -> dict:
    """A new key with these limits: `{"name", "key", ...}`. The key is shown here once and never stored."""
    key = new_key()
    entry = ApiKey(**body.model_dump(), key_sha256=hash_key(key))
    try:
        clients.registry.add(entry)
    except KeyExists:
        raise HTTPException(409, f"a key named {body.name!r} exists; revoke it first") from None
    except RedisError as exc:
        raise HTTPException(503, "the key store is unavailable", headers={"Retry-After": "2"}) from exc
    audit.warning("admin created API key %r from %s", body.name, _client_host(request))
    return {"name": entry.name, "key": key, **entry.public()}


@router.get("")
async def list_keys(clients: ClientsDep) -> dict:
    """Every key's name, limits and current usage (never the key or its hash)."""
    now = time.time()
    keys = [{**k.public(), "usage": clients.quotas.usage(k.name, now)} for k in clients.registry.all()]
    return {"keys": keys, "required": clients.required}


@router.delete("/{name}")
async def revoke_key(name: str, request: Request, clients: ClientsDep) -> dict:
    """Revoke a key: its next request gets 401 on every replica."""
    removed = clients.registry.remove(name)
    if removed is None:
        raise HTTPException(409, f"key {name!r} is configured in the settings; remove it there")
    if not removed:
        raise HTTPException(404, f"no key named {name!r}")
    audit.warning("admin revoked API key %r from %s", name, _client_host(request))
    return {"name": name, "revoked": True}

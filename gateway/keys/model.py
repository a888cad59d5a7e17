"""Client API keys: what one key may do, and how a key is made and recognised (only its SHA-256 is stored).

A key is 32 random bytes (`secrets.token_urlsafe`), so a plain SHA-256 is enough to store it: there is
nothing to brute-force, unlike a password, and a lookup is one hash and one dictionary/Redis read.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

KEY_PREFIX = "rt2i_"
Arm = Literal["edge", "cloud"]
NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


def hash_key(key: str) -> str:
    """The SHA-256 (hex) a key is stored and looked up by."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh high-entropy key (shown to the operator once, never stored)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyLimits(BaseModel):
    """What a client key may do. Unset limits are not enforced (the gateway's own caps still apply)."""

    model_config = ConfigDict(extra="forbid")
    requests_per_minute: int | None = Field(None, ge=1, description="Requests per clock minute (429 past it).")
    images_per_day: int | None = Field(None, ge=1, description="Images per UTC day (429 past it).")
    max_cloud_share: float | None = Field(
        None, ge=0, le=1, description="Most of this key's requests the cloud may serve; the global ρ caps it too."
    )
    allowed_arms: list[Arm] = Field(default_factory=lambda: ["edge", "cloud"], min_length=1)
    private: bool = Field(False, description="Requests of this key are private (edge only) unless they say otherwise.")


class KeyCreate(KeyLimits):
    """`POST /admin/keys`: a new key's name and limits (the gateway draws the key)."""

    name: str = Field(pattern=NAME_PATTERN)


class ApiKey(KeyCreate):
    """A stored key: name, limits and the key's SHA-256 (the settings' `api_keys` entries and the keys file)."""

    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: float = Field(default_factory=time.time)

    def public(self) -> dict:
        """What GET /admin/keys shows: everything but the hash."""
        return self.model_dump(exclude={"key_sha256"})

    @property
    def cloud_allowed(self) -> bool:
        return "cloud" in self.allowed_arms and self.max_cloud_share != 0

    @property
    def share_limited(self) -> bool:
        return "cloud" not in self.allowed_arms or self.max_cloud_share is not None

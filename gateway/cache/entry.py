"""One cache entry: the images of a generation as PNG bytes, with its seed and model, and their byte encoding."""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass

from PIL import Image

from backends.base import GenerationResult

_HEADER = struct.Struct(">I")  # length of the JSON header that precedes the PNGs


@dataclass(frozen=True)
class CachedImages:
    pngs: tuple[bytes, ...]
    seed: int
    model: str
    backend: str  # "edge" or "cloud": the arm that made them

    @classmethod
    def of(cls, result: GenerationResult, pngs: list[bytes]) -> CachedImages:
        return cls(tuple(pngs), result.seed, result.model, result.backend)

    @property
    def size(self) -> int:
        """Bytes this entry holds (what the byte bound counts)."""
        return sum(len(png) for png in self.pngs)

    def result(self) -> GenerationResult:
        """A result serving the cached bytes as they are (the images decode lazily, if ever)."""
        images = [Image.open(io.BytesIO(png)) for png in self.pngs]
        return GenerationResult(
            images=images, seed=self.seed, backend=self.backend, model=self.model, png=list(self.pngs)
        )

    def encode(self) -> bytes:
        header = json.dumps(
            {"seed": self.seed, "model": self.model, "backend": self.backend, "sizes": [len(p) for p in self.pngs]}
        ).encode()
        return _HEADER.pack(len(header)) + header + b"".join(self.pngs)

    @classmethod
    def decode(cls, data: bytes) -> CachedImages:
        """The entry `encode` wrote; ValueError for anything else (a foreign or truncated value)."""
        try:
            (length,) = _HEADER.unpack_from(data)
            header = json.loads(data[_HEADER.size : _HEADER.size + length])
            offset, pngs = _HEADER.size + length, []
            for size in header["sizes"]:
                pngs.append(data[offset : offset + size])
                offset += size
            if offset != len(data) or any(len(p) != s for p, s in zip(pngs, header["sizes"], strict=True)):
                raise ValueError("length mismatch")
            return cls(tuple(pngs), int(header["seed"]), str(header["model"]), str(header["backend"]))
        except (struct.error, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a cache entry ({exc})") from exc

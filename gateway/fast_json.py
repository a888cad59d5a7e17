"""JSON for the hot responses (generated images): orjson when installed (`routet2i[fast]`), else the standard
library. A 512×512 PNG is ~550 kB of base64 in one string; `json.dumps` spends ~1.6 ms scanning it on this
project's 2-core benchmark machine, orjson ~0.04 ms (docs/BENCHMARKS.md)."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import Response

try:
    import orjson
except ImportError:  # the optional extra is not installed
    orjson = None


def dumps(content: Any) -> bytes:
    if orjson is not None:
        return orjson.dumps(content)
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


class FastJSONResponse(Response):
    """`JSONResponse` with `dumps` above (content already JSON-ready: `model_dump(mode="json")`)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)

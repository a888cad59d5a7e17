"""The operator console and playground: static files shipped in the package (mounted by `create_app`)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse, JSONResponse

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
router = APIRouter()


@router.get("/", include_in_schema=False)
async def console() -> Response:
    index = STATIC_DIR / "index.html"
    if not index.exists():
        return JSONResponse({"detail": "no console page in this build; see /openapi.json for the API"}, status_code=404)
    return FileResponse(index)

"""The HTTP API: FastAPI dependencies (`deps.py`) and one `APIRouter` per concern (`routes/`).

`gateway/app.py` builds the components, puts them on `app.state` and includes `api_router`.
"""

from fastapi import APIRouter

from gateway.api.routes import admin, console, generate, jobs, keys, ops

api_router = APIRouter()
for module in (generate, jobs, admin, keys, ops, console):
    api_router.include_router(module.router)

__all__ = ["api_router"]

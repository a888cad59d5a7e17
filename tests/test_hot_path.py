"""The request path stays on the event loop: no dependency of the generation and routing endpoints is a plain
`def` (FastAPI would run each in its thread pool, a thread hop per dependency per request) except the lookup of
a bearer token, which may need Redis."""

from __future__ import annotations

import inspect

from fastapi.routing import APIRoute

from gateway.api.routes.generate import router

HOT = {"/generate", "/v1/images/generations", "/route"}


def dependencies(dependant) -> list:
    found = []
    for sub in dependant.dependencies:
        found.append(sub.call)
        found += dependencies(sub)
    return found


def is_async(call) -> bool:
    """A coroutine function, or an instance whose __call__ is one (FastAPI's security schemes)."""
    return inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(type(call).__call__)


def test_the_hot_endpoints_have_only_async_dependencies():
    routes = [r for r in router.routes if isinstance(r, APIRoute) and r.path in HOT]
    assert {r.path for r in routes} == HOT
    for route in routes:
        calls = dependencies(route.dependant)
        assert calls, route.path
        sync = [getattr(c, "__name__", type(c).__name__) for c in calls if not is_async(c)]
        assert not sync, f"{route.path}: {sync} would run in the thread pool on every request"

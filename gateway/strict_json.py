"""Strict JSON request bodies: what Python's `json.loads` accepts but no standard JSON parser should.

`json.loads` takes `NaN`, `Infinity`, numbers that overflow to `inf` (`1e309`), integers too long to
convert (a `ValueError`, not a decode error) and strings with unpaired UTF-16 surrogates (`"\\ud800"`,
which no UTF-8 encoder can write back). Each of these used to reach the handlers and end as a 500.
`json_body_error` names what is wrong with a body, without quoting it (it may be a private prompt).
"""

from __future__ import annotations

import json
import math
from typing import Any


class StrictJSONError(ValueError):
    """The body is not strict JSON; the message names the problem, never the offending text."""


def _reject_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not JSON: numbers must be finite")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise StrictJSONError("a number overflows a 64-bit float: numbers must be finite")
    return value


def _check_text(value: Any) -> None:
    """Raise if any string (key or value) holds an unpaired surrogate (it has no UTF-8 form)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise StrictJSONError("a string holds an unpaired UTF-16 surrogate (\\ud800-\\udfff)") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def strict_loads(body: bytes | str) -> Any:
    """`json.loads` that raises `StrictJSONError` for non-finite numbers, unpaired surrogates and anything
    else it would not parse."""
    try:
        value = json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
    except StrictJSONError:
        raise
    except json.JSONDecodeError as exc:
        raise StrictJSONError(f"JSON decode error: {exc.msg} at position {exc.pos}") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4,300 digits, deep nesting
        raise StrictJSONError(f"JSON decode error: {type(exc).__name__}") from None
    _check_text(value)
    return value


def is_json_content(content_type: str | None) -> bool:
    """Whether FastAPI parses a body with this content type as JSON (no type at all included)."""
    if not content_type:
        return True
    main = content_type.split(";", 1)[0].strip().lower()
    kind, _, subtype = main.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def json_body_error(content_type: str | None, body: bytes) -> str | None:
    """Why a request body that FastAPI would parse as JSON is not strict JSON, or None when it is fine."""
    if not body or not is_json_content(content_type):
        return None
    try:
        strict_loads(body)
    except StrictJSONError as exc:
        return str(exc)
    return None

"""Input limits of the service, in one place: the request body size (413), how much of a value an
error echoes back, and the checked types of ids and text filters in paths and query strings.

- A body above ``PPPLAN_MAX_BODY_BYTES`` (default 8 MiB) answers 413 with the JSON error body before
  anything parses it: by its ``Content-Length``, or, when it has none (chunked), by counting the
  chunks as they arrive.
- An error echoes at most :data:`MAX_ECHO_CHARS` characters of a value and :data:`MAX_MESSAGE_CHARS`
  of a message, always as valid JSON text (no NaN, no unpaired surrogates, no 5,000-digit integers),
  so a 100 MB value is not echoed back whole.
- Ids and text filters holding a control character (a NUL byte cannot be stored in PostgreSQL)
  answer 422, on every store alike.
"""

from __future__ import annotations

import json
import math
from functools import partial
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import AfterValidator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ppplan.api.schemas import ErrorBody, ErrorItem
from ppplan.core.text import check_text
from ppplan.profiler.files import byte_limit_from_env

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_BODY_ENV",
    "MAX_ECHO_CHARS",
    "MAX_ID_CHARS",
    "MAX_MESSAGE_CHARS",
    "TOO_LARGE",
    "BodySizeLimitMiddleware",
    "GpuQuery",
    "JobIdPath",
    "ModelQuery",
    "PlanIdPath",
    "ProfileIdPath",
    "RunIdQuery",
    "echo",
    "echo_message",
    "install_body_limit",
    "max_body_bytes",
]

MAX_BODY_BYTES = 8 * 1024**2
"""Default cap on a request body, bytes (8 MiB: the largest shipped profile is ~0.2 MiB, a plan
request ~1 KiB)."""
MAX_BODY_ENV = "PPPLAN_MAX_BODY_BYTES"
"""Environment variable that overrides the body cap, in bytes."""
MAX_ECHO_CHARS = 200
"""Characters of a value an error body echoes."""
MAX_MESSAGE_CHARS = 2000
"""Characters of an error message."""
MAX_ID_CHARS = 64
"""Longest id accepted in a path (stored ids are 16 hex digits, job ids 32)."""
_I64 = 2**63
TOO_LARGE: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "the body is not parseable JSON"},
    413: {"model": ErrorBody, "description": f"the body exceeds the size limit ({MAX_BODY_ENV}, default 8 MiB)"},
}
"""The 400 (unparseable JSON) and 413 answers, for the OpenAPI ``responses`` of routes that take a body."""


def max_body_bytes() -> int:
    """The body cap in force, bytes: ``PPPLAN_MAX_BODY_BYTES`` or :data:`MAX_BODY_BYTES`.

    Raises:
        PpplanError: the variable is set to something other than a positive integer.
    """
    return byte_limit_from_env(MAX_BODY_ENV, MAX_BODY_BYTES)


# ---------------------------------------------------------------------------------------------- echo


def _cut(text: str, limit: int) -> str:
    # JSON text must encode as UTF-8: an unpaired surrogate (from "\ud800" in a request) becomes "?"
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.encode("utf-8", "replace").decode("utf-8")


def _int_text(value: int) -> str:
    try:
        return str(value)
    except ValueError:  # above Python's 4,300-digit conversion limit
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"


def echo(value: Any, limit: int = MAX_ECHO_CHARS) -> Any:
    """``value`` as an error body may echo it: valid JSON, at most ``limit`` characters of text.

    Numbers JSON cannot hold exactly (NaN, ±Infinity, integers beyond 64 bits) and containers whose
    JSON is longer than ``limit`` come back as (shortened) text.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -_I64 <= value < _I64 else _cut(_int_text(value), limit)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _cut(value, limit)
    try:
        encoded = jsonable_encoder(value)
        text = json.dumps(encoded, allow_nan=False, ensure_ascii=False)
    except Exception:  # any object, or a container holding NaN or a huge integer: shown as text
        return _cut(repr(value), limit)
    if isinstance(encoded, str):
        return _cut(encoded, limit)
    return encoded if len(text) <= limit else _cut(text, limit)


def echo_message(text: str) -> str:
    """An error message cut to :data:`MAX_MESSAGE_CHARS` characters of valid UTF-8 text."""
    return _cut(text, MAX_MESSAGE_CHARS)


# ---------------------------------------------------------------------------------------------- ids and filters


def _checked(field: str) -> AfterValidator:
    return AfterValidator(partial(_check_optional, field=field))


def _check_optional(value: str | None, field: str) -> str | None:
    return None if value is None else check_text(value, field)


def _id_path(what: str) -> Any:
    return Path(
        max_length=MAX_ID_CHARS, description=f"{what} id (at most {MAX_ID_CHARS} characters, no control characters)"
    )


PlanIdPath = Annotated[str, _id_path("plan"), _checked("plan_id")]
"""A plan id in a path: at most :data:`MAX_ID_CHARS` characters, no control characters (else 422)."""
ProfileIdPath = Annotated[str, _id_path("profile"), _checked("profile_id")]
"""A profile id in a path, checked like :data:`PlanIdPath`."""
JobIdPath = Annotated[str, _id_path("job"), _checked("job_id")]
"""A job id in a path, checked like :data:`PlanIdPath`."""
ModelQuery = Annotated[
    str | None,
    Query(max_length=200, description="model name (case-insensitive, no control characters)"),
    _checked("model"),
]
"""The ``model`` filter of a listing."""
GpuQuery = Annotated[
    str | None,
    Query(max_length=64, description="GPU kind, a catalog name or alias (no control characters)"),
    _checked("gpu"),
]
"""The ``gpu`` filter of a listing."""
RunIdQuery = Annotated[
    str | None, Query(max_length=64, description="executor run id (no control characters)"), _checked("run_id")
]
"""The ``run_id`` filter of a plan's measurements."""


# ---------------------------------------------------------------------------------------------- body size


def _too_large(size: int | None, limit: int) -> JSONResponse:
    got = f"has {size:,} bytes, above" if size is not None else "exceeds"
    item = ErrorItem(field="request", message=f"request: the body {got} the {limit:,}-byte limit ({MAX_BODY_ENV})")
    return JSONResponse(status_code=413, content={"detail": [item.model_dump(exclude_none=True)]})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length before the app sees it
    return None


class BodySizeLimitMiddleware:
    """Answers 413 to a request whose body exceeds ``max_bytes``, before the app reads it.

    A declared ``Content-Length`` is checked at once (the server delivers no more than it
    declares); a body without one is read ahead chunk by chunk, counted, and handed to the app
    only when it is complete and within the cap.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None:
            if declared > self.max_bytes:
                await _too_large(declared, self.max_bytes)(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        total = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break  # a disconnect: the app sees it in turn
            total += len(message.get("body", b""))
            if total > self.max_bytes:
                await _too_large(None, self.max_bytes)(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def install_body_limit(app: FastAPI) -> None:
    """Add :class:`BodySizeLimitMiddleware` with the cap :func:`max_body_bytes` gives to ``app``."""
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes())

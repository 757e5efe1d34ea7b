"""Exceptions to HTTP answers: one JSON shape (``{"detail": [{"field", "message", "value"}]}``) and
one wording (``api.errors``) for every client error, so client input never becomes a 500."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ppplan.api.errors import USER_ERRORS, describe_error, format_validation_error
from ppplan.api.schemas import ErrorItem
from ppplan.api.store.repo import Conflict

__all__ = ["ApiError", "error_items", "install_handlers", "not_found", "validation_items"]

log = logging.getLogger("ppplan.api")
_FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_.×\- ]*?):\s")
_LOC_SKIP = {"body", "query", "path", "header", "cookie"}


class ApiError(Exception):
    """An HTTP error raised by a route: status code and error items."""

    def __init__(self, status: int, items: list[ErrorItem]) -> None:
        super().__init__(items[0].message if items else str(status))
        self.status = status
        self.items = items


def not_found(what: str, field: str, value: str) -> ApiError:
    """404 for an unknown id."""
    return ApiError(404, [ErrorItem(field=field, message=f"{field}: no {what} with id {value!r}", value=value)])


class _One:
    def __init__(self, err: dict[str, Any]) -> None:
        self._err = err

    def errors(self) -> list[dict[str, Any]]:
        return [self._err]


def _safe(value: Any) -> Any:
    try:
        return jsonable_encoder(value)
    except Exception:
        return repr(value)


def validation_items(errors: list[Any]) -> list[ErrorItem]:
    """One item per pydantic/FastAPI validation error, worded like the CLI."""
    items = []
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if str(x) not in _LOC_SKIP]
        if err.get("type") == "json_invalid":
            loc = []
        msg = format_validation_error(_One(err))  # type: ignore[arg-type]
        value = err.get("input")
        if not loc:  # a model-level rule: its message starts with the field it names ("nodes: ...")
            m = _FIELD.match(msg)
            loc = [m.group(1)] if m else []
            if loc and isinstance(value, dict):
                value = value.get(loc[0])
        items.append(
            ErrorItem(
                field=".".join(loc) or "request",
                message=msg,
                value=None if isinstance(value, dict | list) else _safe(value),
            )
        )
    return items


def error_items(exc: BaseException, request_body: dict[str, Any] | None = None) -> list[ErrorItem]:
    """The items of a user error (PlanningError, InfeasibleError, ProfileError, ...)."""
    from pydantic import ValidationError

    from ppplan.partitioner.search import PlanningError

    if isinstance(exc, ValidationError):
        return validation_items(exc.errors())
    msg = describe_error(exc)
    if isinstance(exc, PlanningError | Conflict):
        field = exc.field
    else:
        m = _FIELD.match(msg)
        field = m.group(1) if m else "request"
    value = (request_body or {}).get(field)
    item = ErrorItem(field=field, message=msg, value=_safe(value))
    if isinstance(exc, PlanningError):
        item.needed_bytes = exc.details.get("needed_bytes")
        item.available_bytes = exc.details.get("available_bytes")
    return [item]


def _json(status: int, items: list[ErrorItem]) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": [i.model_dump(exclude_none=True) for i in items]})


def install_handlers(app: FastAPI) -> None:
    """Register the exception handlers on ``app``."""

    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, exc: ApiError) -> JSONResponse:
        return _json(exc.status, exc.items)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return _json(422, validation_items(list(exc.errors())))

    @app.exception_handler(Conflict)
    async def _conflict(_req: Request, exc: Conflict) -> JSONResponse:
        return _json(409, error_items(exc))

    for cls in USER_ERRORS:
        if issubclass(cls, Conflict):  # a user error for the CLI, but 409 here (handled above)
            continue

        async def _user(_req: Request, exc: Exception) -> JSONResponse:
            return _json(422, error_items(exc))

        app.add_exception_handler(cls, _user)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        # routing errors (404 unknown path, 405 method) in the same shape
        return _json(exc.status_code, [ErrorItem(field="path", message=str(exc.detail))])

"""Exceptions to HTTP answers: one JSON shape (``{"detail": [{"field", "message", "value"}]}``) and
one wording (``api.errors``) for every error, so client input never becomes a 500.

User errors (:class:`PpplanError`, pydantic validation) are 422 built from the exception's own
``field``, ``value`` and message, never parsed from text; a store :class:`Conflict` is 409; a store
that is not at the schema head, unreachable, refusing the login or read-only is 503. Any other
exception is a bug: 500 with a request id that the logged traceback carries too.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ppplan.api.errors import describe_error, format_errors
from ppplan.api.limits import echo, echo_message
from ppplan.api.schemas import ErrorItem
from ppplan.api.store.conflict import Conflict
from ppplan.api.store.migrate import StoreNotReadyError, store_fault
from ppplan.core.errors import NOT_GIVEN, PpplanError

__all__ = [
    "REQUEST_ID_HEADER",
    "ApiError",
    "InternalErrorMiddleware",
    "error_items",
    "install_handlers",
    "not_found",
    "validation_items",
]

log = logging.getLogger("ppplan.api")
_LOC_SKIP = {"body", "query", "path", "header", "cookie"}
REQUEST_ID_HEADER = "X-Request-ID"


class ApiError(Exception):
    """An HTTP error raised by a route: status code and error items."""

    def __init__(self, status: int, items: list[ErrorItem]) -> None:
        super().__init__(items[0].message if items else str(status))
        self.status = status
        self.items = items


def not_found(what: str, field: str, value: str) -> ApiError:
    """404 for an unknown id."""
    return ApiError(404, [ErrorItem(field=field, message=f"{field}: no {what} with id {value!r}", value=value)])


def _safe(value: Any) -> Any:
    return echo(value)  # valid JSON, cut short: a 100 MB value is not echoed back whole


def _given(value: Any) -> Any:
    return None if value is NOT_GIVEN else value


def validation_items(errors: list[Any]) -> list[ErrorItem]:
    """One item per pydantic/FastAPI validation error, worded like the CLI."""
    items = []
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if str(x) not in _LOC_SKIP]
        if err.get("type") == "json_invalid":
            loc = []
        value = err.get("input")
        cause = (err.get("ctx") or {}).get("error")
        if not loc and isinstance(cause, PpplanError):  # a model-level rule names its field itself
            loc = [cause.field]
            value = _given(cause.value)
            if value is None and isinstance(err.get("input"), dict):
                value = err["input"].get(cause.field)
        items.append(
            ErrorItem(
                field=".".join(loc) or "request",
                message=format_errors([err]),
                value=None if isinstance(value, dict | list) else _safe(value),
            )
        )
    return items


def error_items(exc: BaseException, request_body: dict[str, Any] | None = None) -> list[ErrorItem]:
    """The items of a user error (:data:`~ppplan.api.errors.USER_ERRORS`).

    ``request_body`` supplies the value when the error does not carry one.
    """
    if isinstance(exc, ValidationError):
        return validation_items(exc.errors())
    body = request_body or {}
    if isinstance(exc, PpplanError):
        value = _given(exc.value)
        return [
            ErrorItem(
                field=exc.field,
                message=exc.message,
                value=_safe(value if value is not None else body.get(exc.field)),
                needed_bytes=exc.details.get("needed_bytes"),
                available_bytes=exc.details.get("available_bytes"),
            )
        ]
    field = exc.field if isinstance(exc, Conflict) else "request"
    return [ErrorItem(field=field, message=describe_error(exc), value=_safe(body.get(field)))]


def _json(status: int, items: list[ErrorItem], headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    # every answer's text is cut short and made valid UTF-8, whichever route built the items
    items = [i.model_copy(update={"message": echo_message(i.message), "value": echo(i.value)}) for i in items]
    content = {"detail": [i.model_dump(exclude_none=True) for i in items], **extra}
    return JSONResponse(status_code=status, content=content, headers=headers)


class InternalErrorMiddleware:
    """Turns an exception no handler took (a bug) into a 500 with the JSON error body.

    The answer names a request id (the client's ``X-Request-ID``, else a new one) in its body and
    in its ``X-Request-ID`` header; the traceback is logged with the same id. A pure ASGI
    middleware, so exceptions do not travel through Starlette's ServerErrorMiddleware, which
    would log them a second time without the id.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            rid = Request(scope).headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
            log.exception("internal error, request id %s: %s %s", rid, scope.get("method"), scope.get("path"))
            if started:  # the client already has a status line: nothing sensible to add
                raise
            item = ErrorItem(
                field="request",
                message=f"internal error ({type(exc).__name__}); request id {rid} (see the server log)",
            )
            await _json(500, [item], {REQUEST_ID_HEADER: rid}, request_id=rid)(scope, receive, send)


def _allowed_methods(req: Request) -> list[str]:
    """The methods the OpenAPI document lists for ``req``'s path (for a 405's ``Allow``).

    Read from the document (what clients are promised), plus the routes it leaves out on purpose
    (the web pages).
    """
    methods: set[str] = set()
    for template, ops in req.app.openapi().get("paths", {}).items():
        regex, _, _ = compile_path(template)
        if regex.match(req.url.path):
            methods |= {m.upper() for m in ops}
    for route in getattr(req.app.state, "unlisted_routes", ()):  # the pages, which the document leaves out
        pattern, allowed = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if pattern is not None and allowed and pattern.match(req.url.path):
            methods |= set(allowed)
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def install_handlers(app: FastAPI) -> None:
    """Register the exception handlers and the internal-error middleware on ``app``."""
    app.add_middleware(InternalErrorMiddleware)

    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, exc: ApiError) -> JSONResponse:
        return _json(exc.status, exc.items)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        # a body that is not JSON at all is malformed syntax (400), not a value breaking a rule (422)
        status = 400 if any(e.get("type") == "json_invalid" for e in errors) else 422
        return _json(status, validation_items(errors))

    @app.exception_handler(ValidationError)
    async def _model_validation(_req: Request, exc: ValidationError) -> JSONResponse:
        return _json(422, error_items(exc))

    @app.exception_handler(Conflict)
    async def _conflict(_req: Request, exc: Conflict) -> JSONResponse:
        return _json(409, error_items(exc))

    @app.exception_handler(StoreNotReadyError)
    async def _store_not_ready(_req: Request, exc: StoreNotReadyError) -> JSONResponse:
        return _json(503, error_items(exc))

    @app.exception_handler(SQLAlchemyError)
    async def _store_fault(req: Request, exc: SQLAlchemyError) -> JSONResponse:
        # unreachable, refusing the login, read-only, locked: the store's fault, 503; others are bugs
        fault = store_fault(exc, req.app.state.settings.database_url)
        if fault is None:
            raise exc
        log.warning("store fault on %s %s: %s", req.method, req.url.path, fault.message)
        return _json(503, error_items(fault))

    @app.exception_handler(PpplanError)
    async def _user(_req: Request, exc: PpplanError) -> JSONResponse:
        return _json(422, error_items(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        # routing errors (404 unknown path, 405 method) in the same shape; keep Starlette's headers
        # (405 names the methods the path allows in ``Allow``)
        headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() != "allow"} or None
        if exc.status_code == 405:  # Starlette names only the first route that matched the path
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(_req))}
        return _json(exc.status_code, [ErrorItem(field="path", message=str(exc.detail))], headers=headers)

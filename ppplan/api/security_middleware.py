"""The ASGI guard in front of the app: a ``Host`` outside the allowed names is 400, a request without the
bearer token (when one is set) is 401, both with the JSON error body.

A pure ASGI middleware rather than a router dependency on ``/v1``, because it answers before anything
else runs: no body is read or parsed, no route is matched and no validation error is shaped for a client
that has not shown the token (a dependency runs only after FastAPI has read and parsed the body, and
unknown paths under ``/v1`` would answer 404 without it). It is also fail-closed: every path needs the
token except the listed open ones (liveness, readiness, the docs), so a route added later is guarded
without anyone remembering to. It sits outside the error middleware and owns its answers' headers
(``WWW-Authenticate``), which an exception handler would not keep.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ppplan.api.schemas import ErrorItem
from ppplan.api.security import ALLOWED_HOSTS_ENV, TOKEN_ENV, app_allowed_hosts, host_allowed, parse_host
from ppplan.api.settings import Settings
from ppplan.core.errors import shorten

__all__ = ["OPEN_PATHS", "SecurityMiddleware", "install_security"]

log = logging.getLogger("ppplan.api")

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
"""Paths served without the token (besides the app's docs pages): probes that carry no data."""
_REALM = 'Bearer realm="ppplan"'


def _digest(token: bytes) -> bytes:
    # compared as fixed-length digests: compare_digest then leaks neither content nor length
    return hashlib.sha256(token).digest()


def _route_path(scope: Scope) -> str:
    """The path the router matches: ``scope["path"]`` without the ``root_path`` a proxy mounts it under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :] or "/"
    return path


def _headers(scope: Scope, name: bytes) -> list[bytes]:
    return [v for k, v in scope.get("headers", ()) if k.lower() == name]


class SecurityMiddleware:
    """Host check for every request, then the bearer token for every path but ``open_paths``.

    Args:
        app: the wrapped ASGI app.
        allowed_hosts: normalised host names (:func:`ppplan.api.security.parse_allowed_hosts`).
        token: the bearer token, or None for no authentication.
        open_paths: route paths served without the token.
    """

    def __init__(
        self, app: ASGIApp, *, allowed_hosts: tuple[str, ...], token: str | None, open_paths: Iterable[str]
    ) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts
        self._token_digest = None if token is None else _digest(token.encode("ascii"))
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":  # no websocket routes today; refuse the same way should one appear
            await send({"type": "websocket.close", "code": 1008})
        else:
            await refusal(scope, receive, send)

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        hosts = _headers(scope, b"host")
        raw = hosts[0].decode("latin-1") if len(hosts) == 1 else ""
        name = parse_host(raw)
        if name is None or not host_allowed(name, self.allowed_hosts):
            # one header: its value echoed (cut short); none or several: the count
            shown = shorten(raw) if len(hosts) == 1 else f"a request with {len(hosts)} Host headers"
            item = ErrorItem(
                field="host",
                value=raw[:200] if len(hosts) == 1 else None,
                message=f"host: {shown} is not a host name this service answers to ({', '.join(self.allowed_hosts)}); "
                f"the operator adds names with `ppplan serve --allowed-hosts` or {ALLOWED_HOSTS_ENV}",
            )
            return _error(400, item)
        if self._token_digest is None or _route_path(scope) in self.open_paths:
            return None
        given = self._bearer(scope)
        if given is None:
            return _error(
                401,
                ErrorItem(
                    field="authorization",
                    message="authorization: this service needs the header `Authorization: Bearer <token>` "
                    f"(the token its operator set with {TOKEN_ENV} or `ppplan serve --token-file`)",
                ),
                {"WWW-Authenticate": _REALM},
            )
        if not hmac.compare_digest(_digest(given), self._token_digest):
            log.info("refused a request to %s: wrong bearer token", scope.get("path"))
            return _error(
                401,
                ErrorItem(field="authorization", message="authorization: the bearer token is not this service's token"),
                {"WWW-Authenticate": f'{_REALM}, error="invalid_token"'},
            )
        return None

    @staticmethod
    def _bearer(scope: Scope) -> bytes | None:
        """The credentials of the first ``Authorization: Bearer`` header, or None when there are none."""
        values = _headers(scope, b"authorization")
        if not values:
            return None
        scheme, _, credentials = values[0].strip().partition(b" ")
        credentials = credentials.strip()
        if scheme.lower() != b"bearer" or not credentials:
            return None
        return credentials


def _error(status: int, item: ErrorItem, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": [item.model_dump(exclude_none=True)]}, headers=headers)


def install_security(app: FastAPI, settings: Settings) -> None:
    """Put :class:`SecurityMiddleware` outermost on ``app`` (call it after every other middleware).

    The open paths are :data:`OPEN_PATHS` and the app's docs pages (Swagger UI, ReDoc, the OpenAPI
    document), so the docs stay readable without the token.
    """
    docs = (app.docs_url, app.redoc_url, app.openapi_url, app.swagger_ui_oauth2_redirect_url)
    token = settings.api_token.get_secret_value() if settings.api_token is not None else None
    app.add_middleware(
        SecurityMiddleware,
        allowed_hosts=app_allowed_hosts(settings.allowed_hosts),
        token=token,
        open_paths=OPEN_PATHS | {p for p in docs if p},
    )

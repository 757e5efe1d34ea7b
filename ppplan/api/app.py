"""The FastAPI app factory: routers under ``/v1``, ``/healthz``, error handlers. At start-up the
default store is created on its first run; any other store must be at the schema head already
(``ppplan db upgrade``), else requests that need it answer 503."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from ppplan.api.http_errors import install_handlers
from ppplan.api.jobs import JobRunner, install_queue_handler
from ppplan.api.limits import install_body_limit
from ppplan.api.routes import api_router, health, pages
from ppplan.api.security_middleware import install_security
from ppplan.api.settings import Settings, get_settings
from ppplan.api.store.migrate import StoreNotReadyError
from ppplan.api.store.repo import ppplan_version
from ppplan.api.store_lookup import open_store

__all__ = ["create_app"]

log = logging.getLogger("ppplan.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    """A ppplan service on ``settings.database_url`` (default: from the environment)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            open_store(settings.database_url)
            app.state.store_ready = True
        except StoreNotReadyError as exc:  # served anyway: /healthz and the routes answer 503 until upgraded
            log.error("%s", exc)
        await app.state.jobs.start()  # the queue starts once the store is at the head
        try:
            yield
        finally:
            await app.state.jobs.stop()

    app = FastAPI(
        title="ppplan",
        version=ppplan_version(),
        summary="Stage-partition optimizer for pipeline-parallel LLM inference, as a service.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store_ready = False  # set by the lifespan, or by the first request that finds it at head
    # made here, not in the lifespan, so transports that skip the lifespan still find it
    app.state.jobs = JobRunner(settings)
    install_handlers(app)
    install_queue_handler(app)
    app.include_router(health.router)
    app.include_router(api_router, prefix="/v1")
    app.include_router(pages.router)  # the web pages (docs/web.md), not in the OpenAPI document
    app.state.unlisted_routes = tuple(pages.router.routes)  # for the Allow header of a 405
    _document_bearer(app)
    install_body_limit(app)  # 413 before anything reads a body (inside the Host and token checks)
    install_security(app, settings)  # last, so outermost: Host and token checked before anything else runs
    return app


def _document_bearer(app: FastAPI) -> None:
    """Name the bearer token in the OpenAPI document: every /v1 operation takes it (required only
    when the service has PPPLAN_API_TOKEN set, hence the empty alternative)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = build()
        spec.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "PPPLAN_API_TOKEN or serve --token-file"}
        }
        for path, ops in spec.get("paths", {}).items():
            if path.startswith("/v1/"):
                for op in ops.values():
                    op["security"] = [{"bearer": []}, {}]
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema

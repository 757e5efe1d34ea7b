"""The FastAPI app factory: routers under ``/v1``, ``/healthz``, error handlers. At start-up the
default store is created on its first run; any other store must be at the schema head already
(``ppplan db upgrade``), else requests that need it answer 503."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ppplan.api.http_errors import install_handlers
from ppplan.api.jobs import JobRunner
from ppplan.api.routes import api_router, health
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
        try:
            yield
        finally:
            app.state.jobs.shutdown()

    app = FastAPI(
        title="ppplan",
        version=ppplan_version(),
        summary="Stage-partition optimizer for pipeline-parallel LLM inference, as a service.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store_ready = False  # set by the lifespan, or by the first request that finds it at head
    # made here, not in the lifespan, so transports that skip the lifespan still find it
    app.state.jobs = JobRunner(
        settings.database_url,
        settings.job_workers,
        settings.max_jobs_kept,
        max_gpus=settings.max_gpus,
        allow_model_paths=settings.allow_model_paths,
    )
    install_handlers(app)
    app.include_router(health.router)
    app.include_router(api_router, prefix="/v1")
    return app

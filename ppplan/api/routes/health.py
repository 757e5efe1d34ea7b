"""Liveness (``/healthz``: the process answers, no database call) and readiness (``/readyz``: the
store can be read and written, at the schema head, and the job queue is there)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from ppplan.api.schemas import ErrorBody
from ppplan.api.store.migrate import probe_store

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up and answers (liveness); says nothing about the store, see ``/readyz``."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"model": ErrorBody, "description": "the store cannot be read or written, or is not at head"}},
)
async def readyz(request: Request) -> dict[str, Any]:
    """The store answers a read and a write (rolled back), is at the schema head, and jobs can be queued.

    Raises:
        StoreNotReadyError: (503) naming the store without its password and what failed.
    """
    state = request.app.state
    probe = await run_in_threadpool(probe_store, state.settings.database_url)
    jobs = state.jobs
    active = await run_in_threadpool(jobs.count_active)
    return {
        "status": "ready",
        "database": probe.dialect,
        "revision": probe.revision,
        "read": "ok",
        "write": "ok",
        "jobs": {"queue": jobs.kind, "active": active, "limit": state.settings.max_queued_jobs},
    }

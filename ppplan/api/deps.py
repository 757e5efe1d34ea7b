"""FastAPI dependencies as ``Annotated`` aliases: ``SessionDep``, ``SettingsDep``, ``JobsDep``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from ppplan.api.jobs import JobRunner
from ppplan.api.settings import Settings
from ppplan.api.store.engine import get_engine
from ppplan.api.store.migrate import require_head

__all__ = ["MAX_SESSIONS", "JobsDep", "SessionDep", "SettingsDep"]

MAX_SESSIONS = 32
"""Sessions open at once per process; below the pool size (api.store.engine.POOL_SIZE + POOL_OVERFLOW)
minus the job threads."""


def get_settings_dep(request: Request) -> Settings:
    """The app's settings."""
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session on the app's database, closed after the request.

    At most :data:`MAX_SESSIONS` exist at once, fewer than the engine's pool holds: a session keeps
    its connection until it is closed, after the response is serialized on a worker thread, and
    without the bound, under load, those serializations queue behind route calls that hold every
    worker thread while they wait for connections only the closings would return (a deadlock until
    the pool times out). Waiting for a session slot holds no thread. Closed on the event loop (an
    async generator): making a Session does no I/O, and closing one costs at most a ROLLBACK.

    Until the store has once been found at the schema head, each request checks it (on a worker
    thread) and a store that is not answers 503, so a service started before ``ppplan db upgrade``
    recovers without a restart.

    Raises:
        StoreNotReadyError: the store is empty, behind the head or unreachable.
    """
    state = request.app.state
    if not state.store_ready:
        await run_in_threadpool(require_head, state.settings.database_url)
        state.store_ready = True
    factory = sessionmaker(get_engine(request.app.state.settings.database_url), expire_on_commit=False)
    session = factory()
    try:
        yield session
    finally:
        session.close()


def get_jobs(request: Request) -> JobRunner:
    """The app's job runner."""
    return request.app.state.jobs  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session, scope="function", max_concurrency=MAX_SESSIONS)]
JobsDep = Annotated[JobRunner, Depends(get_jobs)]

"""Asynchronous planning jobs: records in the store that every server process shares, run by the
server's thread pool on SQLite or by the procrastinate task queue on PostgreSQL (``api.queue``).

Jobs are for solves that may take long (large clusters); the plan itself lands in the store like a
synchronous one, so a finished job's ``plan_id`` outlives the job and the process. At most
``PPPLAN_MAX_QUEUED_JOBS`` jobs are queued or running at once, all servers of the store together;
one more is refused with 429 and ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.engine import make_url

from ppplan.api.queue import records
from ppplan.api.queue.records import QueueFullError
from ppplan.api.schemas import ErrorBody, ErrorItem, JobPublic
from ppplan.api.settings import Settings
from ppplan.api.store.engine import session_scope
from ppplan.api.store.migrate import StoreNotReadyError, require_head, store_errors
from ppplan.partitioner.request import PlanRequest

__all__ = ["JobRunner", "QueueFullError", "install_queue_handler"]

log = logging.getLogger("ppplan.jobs")

START_RETRY_S = 2.0
"""Seconds between tries to start the queue on a store that is not at the schema head yet."""


class _Queue(Protocol):
    kind: str

    async def start(self) -> None: ...
    def enqueue(self, job_id: str) -> int | None: ...
    async def stop(self) -> None: ...


def _make_queue(settings: Settings) -> _Queue:
    try:
        postgres = make_url(settings.database_url).get_backend_name() == "postgresql"
    except Exception:  # not a URL: the store reports that on first use
        postgres = False
    if postgres:
        try:
            from ppplan.api.queue.pg import ProcrastinateQueue  # lazy: procrastinate is the postgres extra
        except ImportError as exc:
            raise StoreNotReadyError(
                "database_url", rule=f"jobs on PostgreSQL need ppplan's postgres extra (procrastinate; {exc})"
            ) from None
        return ProcrastinateQueue(settings)
    from ppplan.api.queue.local import ThreadQueue  # lazy: the counterpart of the line above

    return ThreadQueue(settings)


class JobRunner:
    """Submits plan requests as jobs and reads them back, on the queue that suits the store."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._queue: _Queue | None = None
        self._starter: asyncio.Task[None] | None = None

    @property
    def kind(self) -> str:
        """``procrastinate`` (PostgreSQL) or ``threads`` (SQLite)."""
        return self._queue_now().kind

    def _queue_now(self) -> _Queue:
        if self._queue is None:  # made on first use: transports that skip the lifespan still get one
            self._queue = _make_queue(self._settings)
        return self._queue

    async def start(self) -> None:
        """Start the queue (the server's lifespan): now when the store is at the schema head, else in
        the background as soon as it is (``ppplan db upgrade`` needs no restart)."""
        try:
            await self._try_start()
        except StoreNotReadyError as exc:
            log.warning("job queue waits for the store: %s", exc)
            self._starter = asyncio.create_task(self._start_when_ready(), name="ppplan-queue-start")

    async def _try_start(self) -> None:
        await asyncio.to_thread(require_head, self._settings.database_url)
        await self._queue_now().start()

    async def _start_when_ready(self) -> None:
        while True:
            await asyncio.sleep(START_RETRY_S)
            try:
                await self._try_start()
                return
            except StoreNotReadyError:
                continue

    async def stop(self) -> None:
        """Stop the queue; queued jobs stay recorded and run later (here or on another server)."""
        if self._starter is not None and not self._starter.done():
            self._starter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._starter
        if self._queue is not None:
            await self._queue.stop()

    def submit(self, req: PlanRequest) -> JobPublic:
        """Record ``req`` as a queued job and queue it; returns the job as queued. Call from a worker
        thread (the routes' thread pool), not the event loop.

        Raises:
            QueueFullError: ``PPPLAN_MAX_QUEUED_JOBS`` jobs are queued or running.
            StoreNotReadyError: the store or the queue failed.
        """
        s = self._settings
        with store_errors(s.database_url), session_scope(s.database_url) as session:
            row = records.create(session, req, max_queued=s.max_queued_jobs, retry_after_s=s.job_retry_after_s)
            job = records.public(row)
        try:
            queue_id = self._queue_now().enqueue(job.id)
        except Exception as exc:
            log.error("job %s could not be queued: %s", job.id, exc)
            item = ErrorItem(field="request", message=f"the job could not be queued ({type(exc).__name__})")
            with store_errors(s.database_url), session_scope(s.database_url) as session:
                records.fail(session, job.id, ErrorBody(detail=[item], request_id=job.id), 503)
            raise
        if queue_id is not None:
            with store_errors(s.database_url), session_scope(s.database_url) as session:
                records.set_queue_id(session, job.id, queue_id)
        return job

    def get(self, job_id: str) -> JobPublic | None:
        """The job ``job_id``, submitted to any server of the store, or None when unknown (or forgotten).

        Raises:
            StoreNotReadyError: the store failed.
        """
        url = self._settings.database_url
        with store_errors(url), session_scope(url) as session:
            row = records.get(session, job_id)
            return None if row is None else records.public(row)

    def count_active(self) -> int:
        """Jobs queued or running on every server of the store."""
        url = self._settings.database_url
        with store_errors(url), session_scope(url) as session:
            return records.count_active(session)


def install_queue_handler(app: FastAPI) -> None:
    """Answer :class:`QueueFullError` with 429, ``Retry-After`` and the JSON error body."""

    @app.exception_handler(QueueFullError)
    async def _queue_full(_req: Request, exc: QueueFullError) -> JSONResponse:
        item = ErrorItem(field="mode", message=str(exc), value="async")
        return JSONResponse(
            status_code=429,
            content={"detail": [item.model_dump(exclude_none=True)]},
            headers={"Retry-After": str(exc.retry_after_s)},
        )

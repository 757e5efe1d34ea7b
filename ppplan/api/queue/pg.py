"""The PostgreSQL queue: procrastinate (the ``postgres`` extra). Jobs are rows in procrastinate's
tables (schema ``procrastinate``, created by ``ppplan db upgrade``); every server process runs a
procrastinate worker in its event loop, which claims jobs with ``SELECT … FOR UPDATE SKIP LOCKED``
and is woken by ``LISTEN/NOTIFY``, so a job submitted to one replica may run on any.

A worker process that dies leaves its job in procrastinate's ``doing`` state and stops sending
heartbeats; every server checks, every ``job_heartbeat_s``, for jobs whose worker has been silent
for ``job_stalled_after_s`` and queues them again (procrastinate's documented stalled-jobs recipe),
up to ``job_max_attempts`` runs, after which the job fails with a 500 outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import procrastinate
from procrastinate import jobs as pjobs
from sqlalchemy.engine import make_url

from ppplan.api.queue import records
from ppplan.api.queue.execute import run_job
from ppplan.api.redact import redact
from ppplan.api.schemas import ErrorBody, ErrorItem
from ppplan.api.settings import Settings
from ppplan.api.store.engine import session_scope
from ppplan.api.store.faults import StoreNotReadyError

__all__ = ["QUEUE", "QUEUE_SCHEMA", "TASK_NAME", "ProcrastinateQueue", "conninfo"]

log = logging.getLogger("ppplan.jobs")

QUEUE = "ppplan-plans"
TASK_NAME = "ppplan.plan_job"
QUEUE_SCHEMA = "procrastinate"
"""Where migration 0002 put procrastinate's objects; its connections search only there."""
DEFER_TIMEOUT_S = 30.0
STOP_GRACE_S = 10.0
"""How long a stopping server waits for its running jobs; unfinished ones are run again elsewhere."""


def conninfo(url: str) -> str:
    """The libpq URL (with its password) of the SQLAlchemy URL ``url`` (any PostgreSQL driver)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class ProcrastinateQueue:
    """A procrastinate app and a worker in this process's event loop."""

    kind = "procrastinate"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        connector = procrastinate.PsycopgConnector(
            conninfo=conninfo(settings.database_url),
            kwargs={"options": f"-c search_path={QUEUE_SCHEMA}"},
            min_size=1,
            max_size=max(4, settings.job_workers + 3),  # worker fetches, LISTEN, heartbeats, defers
        )
        self.app = procrastinate.App(connector=connector)

        @self.app.task(name=TASK_NAME, queue=QUEUE, retry=self._retry_strategy())
        def plan_job(job_id: str) -> None:
            run_job(settings, job_id)

        self._task = plan_job
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    def _retry_strategy(self) -> procrastinate.RetryStrategy:
        # a store fault at the start or end of a run is retried; a plan's own errors are outcomes
        return procrastinate.RetryStrategy(
            max_attempts=self._settings.job_max_attempts, wait=2, retry_exceptions={StoreNotReadyError}
        )

    async def start(self) -> None:
        """Open the connection pool, start the worker and the stalled-job check.

        Raises:
            StoreNotReadyError: the queue's connection pool cannot be opened.
        """
        self._loop = asyncio.get_running_loop()
        try:
            await self.app.open_async()
        except Exception as exc:
            raise StoreNotReadyError("database_url", rule=f"cannot open the job queue ({redact(str(exc))})") from None
        s = self._settings
        worker = self.app.run_worker_async(
            queues=[QUEUE],
            name=f"ppplan-{records.RUNNER}",
            concurrency=s.job_workers,
            install_signal_handlers=False,
            update_heartbeat_interval=s.job_heartbeat_s,
            stalled_worker_timeout=s.job_stalled_after_s,
            delete_jobs="successful",
            shutdown_graceful_timeout=STOP_GRACE_S,
            # LISTEN/NOTIFY wakes the worker for new jobs; a requeued stalled job is found by polling
            fetch_job_polling_interval=min(5.0, s.job_heartbeat_s),
        )
        self._tasks = [
            asyncio.create_task(worker, name="ppplan-queue-worker"),
            asyncio.create_task(self._retry_stalled(), name="ppplan-queue-stalled"),
        ]

    def enqueue(self, job_id: str) -> int | None:
        """Defer job ``job_id`` from any thread but the event loop's; returns procrastinate's job id."""
        if self._loop is None:
            raise StoreNotReadyError("database_url", rule="the job queue is not started")
        fut = asyncio.run_coroutine_threadsafe(self._task.defer_async(job_id=job_id), self._loop)
        return int(fut.result(timeout=DEFER_TIMEOUT_S))

    async def _retry_stalled(self) -> None:
        while True:
            await asyncio.sleep(self._settings.job_heartbeat_s)
            try:
                await self.retry_stalled_once()
            except Exception as exc:  # the store is down: the next round tries again
                log.warning("stalled-job check failed: %s", exc)

    async def retry_stalled_once(self) -> int:
        """Queue again the jobs whose worker stopped sending heartbeats; returns how many."""
        manager = self.app.job_manager
        stalled = await manager.get_stalled_jobs(
            queue=QUEUE, seconds_since_heartbeat=self._settings.job_stalled_after_s
        )
        n = 0
        for job in stalled:
            try:
                if job.attempts + 1 >= self._settings.job_max_attempts:
                    await manager.finish_job(job, status=pjobs.Status.FAILED, delete_job=False)
                    await asyncio.to_thread(self._give_up, job.task_kwargs.get("job_id"), job.attempts + 1)
                else:
                    await manager.retry_job(job)
                    log.warning("job %s: its worker %s died; queued again", job.task_kwargs, job.worker_id)
                n += 1
            except Exception as exc:  # another server took it first
                log.info("stalled job %s not requeued here: %s", job.id, exc)
        return n

    def _give_up(self, job_id: Any, runs: int) -> None:
        if not isinstance(job_id, str):
            return
        item = ErrorItem(
            field="request",
            message=f"the job's worker process died {runs} times (PPPLAN_JOB_MAX_ATTEMPTS); see the server logs",
        )
        with session_scope(self._settings.database_url) as session:
            records.fail(session, job_id, ErrorBody(detail=[item], request_id=job_id), 500)

    async def stop(self) -> None:
        """Stop the worker (running jobs get :data:`STOP_GRACE_S`) and close the pool."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        with contextlib.suppress(Exception):
            await self.app.close_async()

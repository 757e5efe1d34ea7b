"""The SQLite queue: the server process's thread pool. One server process owns a SQLite store's jobs
(``ppplan serve`` refuses ``--workers`` above 1 there), so at start-up the jobs left queued or
running by its previous life are run again rather than left hanging."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from ppplan.api.queue import records
from ppplan.api.queue.execute import run_job
from ppplan.api.settings import Settings
from ppplan.api.store.engine import session_scope

__all__ = ["ThreadQueue"]

log = logging.getLogger("ppplan.jobs")


class ThreadQueue:
    """Runs jobs on ``settings.job_workers`` threads of this process."""

    kind = "threads"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pool = ThreadPoolExecutor(max_workers=settings.job_workers, thread_name_prefix="ppplan-job")

    async def start(self) -> None:
        """Queue again the jobs a previous run of this server left unfinished (a store that cannot be
        read now is left alone: its requests answer 503 until it can)."""
        try:
            with session_scope(self._settings.database_url) as session:
                left = records.active_ids(session)
        except Exception as exc:
            log.warning("jobs left by an earlier run not resumed: %s", exc)
            return
        for job_id in left:
            self.enqueue(job_id)
        if left:
            log.info("resumed %d job(s) an earlier run of this server left unfinished", len(left))

    def enqueue(self, job_id: str) -> int | None:
        """Run job ``job_id`` on a pool thread; returns no queue id."""
        self._pool.submit(self._run, job_id)
        return None

    def _run(self, job_id: str) -> None:
        try:
            run_job(self._settings, job_id)
        except Exception:  # the store failed: the record stays active and is resumed at the next start
            log.exception("job %s could not be run", job_id)

    async def stop(self) -> None:
        """Stop taking jobs; running ones finish, queued ones are resumed at the next start."""
        self._pool.shutdown(wait=False, cancel_futures=True)

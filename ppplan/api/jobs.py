"""Asynchronous planning jobs: a thread pool and an in-memory table of jobs, per server process.

Jobs are for solves that may take long (large clusters); the plan itself lands in the store like a
synchronous one, so a finished job's ``plan_id`` outlives the job and the process.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ppplan.api.errors import USER_ERRORS
from ppplan.api.http_errors import error_items
from ppplan.api.schemas import ErrorBody, ErrorItem, JobPublic
from ppplan.api.service import check_http_request, plan_and_store
from ppplan.api.store.engine import session_scope
from ppplan.partitioner.request import PlanRequest

__all__ = ["JobRunner"]

log = logging.getLogger("ppplan.jobs")


@dataclass(slots=True)
class _Job:
    id: str
    status: str = "queued"
    created: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    finished: dt.datetime | None = None
    plan_id: str | None = None
    cached: bool | None = None
    error: ErrorBody | None = None
    http_status: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Outcome:
    """How a job ended: a plan (``error`` None) or an error body, and the HTTP status it stands for."""

    plan_id: str | None = None
    cached: bool | None = None
    error: ErrorBody | None = None
    http_status: int


class JobRunner:
    """Runs plan requests on worker threads and remembers the last ``keep`` jobs."""

    def __init__(self, database_url: str, workers: int, keep: int, *, max_gpus: int, allow_model_paths: bool) -> None:
        self._url = database_url
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ppplan-job")
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._lock = threading.Lock()
        self._keep = keep
        self._max_gpus = max_gpus
        self._allow_paths = allow_model_paths

    def submit(self, req: PlanRequest) -> JobPublic:
        """Queue ``req``; returns the job as queued."""
        job = _Job(id=uuid.uuid4().hex[:16])
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > self._keep:
                oldest = next(iter(self._jobs))
                if self._jobs[oldest].status in ("queued", "running"):
                    break
                self._jobs.pop(oldest)
        self._pool.submit(self._run, job, req)
        return self._public(job)

    def get(self, job_id: str) -> JobPublic | None:
        """The job ``job_id``, or None when unknown (or forgotten)."""
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else self._public(job)

    def shutdown(self) -> None:
        """Stop taking jobs; running ones finish."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, job: _Job, req: PlanRequest) -> None:
        with self._lock:
            job.status = "running"
        outcome = self._outcome(job, req)
        with self._lock:
            job.status = "done" if outcome.error is None else "failed"
            job.plan_id, job.cached = outcome.plan_id, outcome.cached
            job.error, job.http_status = outcome.error, outcome.http_status
            job.finished = dt.datetime.now(dt.UTC)

    def _outcome(self, job: _Job, req: PlanRequest) -> _Outcome:
        try:
            check_http_request(req, max_gpus=self._max_gpus, allow_model_paths=self._allow_paths)
            with session_scope(self._url) as session:
                row, created = plan_and_store(session, req)
                return _Outcome(plan_id=row.id, cached=not created, http_status=201 if created else 200)
        except USER_ERRORS as exc:
            return _Outcome(error=ErrorBody(detail=error_items(exc, req.model_dump())), http_status=422)
        except Exception:  # a bug: the job fails, the server keeps serving
            log.exception("job %s failed", job.id)
            item = ErrorItem(field="request", message=f"internal error; request id {job.id} (see the server log)")
            return _Outcome(error=ErrorBody(detail=[item], request_id=job.id), http_status=500)

    @staticmethod
    def _public(job: _Job) -> JobPublic:
        return JobPublic(
            id=job.id,
            status=job.status,
            created=job.created,  # type: ignore[arg-type]
            finished=job.finished,
            plan_id=job.plan_id,
            cached=job.cached,
            error=job.error,
            http_status=job.http_status,
        )

"""Job records in the store (``plan_jobs``): every server process writes and reads the same rows, so
a job submitted to one replica is polled on any other, and the queue bound counts them all."""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from ppplan.api.schemas import ErrorBody, JobPublic
from ppplan.api.store.models import JOB_ACTIVE, JobRow, utcnow
from ppplan.partitioner.request import PlanRequest

__all__ = [
    "RUNNER",
    "Outcome",
    "QueueFullError",
    "active_ids",
    "count_active",
    "create",
    "fail",
    "finish",
    "get",
    "prune",
    "public",
    "set_queue_id",
    "start",
]

RUNNER = f"{socket.gethostname()[:100]}:{os.getpid()}"
"""This process, as recorded in ``plan_jobs.runner`` (host:pid)."""

_PG_QUEUE_LOCK = 0x7070706A6F6273  # "ppjobs": serialises the bound check of concurrent submissions


class QueueFullError(Exception):
    """The job queue holds ``limit`` jobs already (HTTP 429 with ``Retry-After: retry_after_s``)."""

    def __init__(self, active: int, limit: int, retry_after_s: int) -> None:
        super().__init__(
            f"the job queue is full ({active} jobs queued or running, limit {limit} set by "
            f"PPPLAN_MAX_QUEUED_JOBS); retry in {retry_after_s} s"
        )
        self.active, self.limit, self.retry_after_s = active, limit, retry_after_s


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How a job ended: a plan (``error`` None) or an error body, and the HTTP status it stands for."""

    plan_id: str | None = None
    cached: bool | None = None
    error: ErrorBody | None = None
    http_status: int


def count_active(session: Session) -> int:
    """Jobs queued or running, on every server of the store."""
    return int(session.scalar(select(func.count()).select_from(JobRow).where(JobRow.status.in_(JOB_ACTIVE))) or 0)


def create(session: Session, req: PlanRequest, *, max_queued: int, retry_after_s: int) -> JobRow:
    """Record a queued job for ``req``, unless ``max_queued`` jobs are queued or running already.

    The count and the insert are one transaction; on PostgreSQL an advisory lock makes concurrent
    submissions from any server take turns, so the bound is exact (SQLite has one writer anyway).

    Raises:
        QueueFullError: the bound is reached (nothing recorded).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SELECT pg_advisory_xact_lock({_PG_QUEUE_LOCK})"))
    active = count_active(session)
    if active >= max_queued:
        session.rollback()
        raise QueueFullError(active, max_queued, retry_after_s)
    row = JobRow(id=uuid.uuid4().hex[:16], status="queued", request=req.model_dump(mode="json"), attempts=0)
    row.created = utcnow()
    session.add(row)
    session.commit()
    return row


def get(session: Session, job_id: str) -> JobRow | None:
    """The job ``job_id``, or None."""
    return session.get(JobRow, job_id)


def set_queue_id(session: Session, job_id: str, queue_job_id: int) -> None:
    """Remember the task queue's id of the job (PostgreSQL; for operators reading procrastinate's tables)."""
    session.execute(update(JobRow).where(JobRow.id == job_id).values(queue_job_id=queue_job_id))
    session.commit()


def start(session: Session, job_id: str) -> dict[str, Any] | None:
    """Mark the job running here (one more attempt); returns its request JSON, or None when the job
    is unknown or has ended already (a retried job whose first run did finish)."""
    n = session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.status.in_(JOB_ACTIVE))
        .values(status="running", started=utcnow(), runner=RUNNER, attempts=JobRow.attempts + 1)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    if not n:
        return None
    row = session.get(JobRow, job_id)
    return None if row is None else dict(row.request)


def finish(session: Session, job_id: str, outcome: Outcome) -> None:
    """Record how the job ended."""
    session.execute(
        update(JobRow)
        .where(JobRow.id == job_id)
        .values(
            status="done" if outcome.error is None else "failed",
            finished=utcnow(),
            plan_id=outcome.plan_id,
            cached=outcome.cached,
            http_status=outcome.http_status,
            error=None if outcome.error is None else outcome.error.model_dump(mode="json", exclude_none=True),
        )
    )
    session.commit()


def fail(session: Session, job_id: str, error: ErrorBody, http_status: int) -> None:
    """Record that the job failed without an outcome of its own (its workers died, it could not be queued)."""
    finish(session, job_id, Outcome(error=error, http_status=http_status))


def active_ids(session: Session) -> list[str]:
    """Ids of the jobs queued or running, oldest first."""
    return list(session.scalars(select(JobRow.id).where(JobRow.status.in_(JOB_ACTIVE)).order_by(JobRow.created)))


def prune(session: Session, keep: int) -> None:
    """Forget finished jobs beyond the newest ``keep``."""
    cutoff = session.scalar(
        select(JobRow.created)
        .where(JobRow.status.not_in(JOB_ACTIVE))
        .order_by(JobRow.created.desc())
        .offset(keep)
        .limit(1)
    )
    if cutoff is not None:
        session.execute(delete(JobRow).where(JobRow.status.not_in(JOB_ACTIVE), JobRow.created <= cutoff))
        session.commit()


def _utc(t: dt.datetime | None) -> dt.datetime | None:
    # SQLite keeps no zone: every stored time is UTC
    return None if t is None else (t if t.tzinfo else t.replace(tzinfo=dt.UTC))


def public(row: JobRow) -> JobPublic:
    """The job as the API shows it."""
    return JobPublic(
        id=row.id,
        status=row.status,  # type: ignore[arg-type]
        created=_utc(row.created),  # type: ignore[arg-type]
        finished=_utc(row.finished),
        plan_id=row.plan_id,
        cached=row.cached,
        error=None if row.error is None else ErrorBody.model_validate(row.error),
        http_status=row.http_status,
    )

"""The SQL schema as typed SQLAlchemy 2.x ORM classes. Alembic (``migrations/``) owns the real schema;
``tests/test_store_migrations.py`` proves the two agree."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = ["JOB_ACTIVE", "Base", "JobRow", "MeasurementRow", "PlanRequestRow", "PlanRow", "ProfileRow", "utcnow"]

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    """Now, UTC, with microseconds (every timestamp in the store is UTC)."""
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    """Declarative base with a constraint naming convention (stable names for migrations)."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, dt.datetime: DateTime(timezone=True)}  # noqa: RUF012


class ProfileRow(Base):
    """A stored profile (analytic or measured); ``id`` is the profile's own content hash."""

    __tablename__ = "profiles"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    model_name: Mapped[str] = mapped_column(String(200), index=True)
    weight_dtype: Mapped[str] = mapped_column(String(16))
    kv_dtype: Mapped[str] = mapped_column(String(16))
    device: Mapped[str | None] = mapped_column(String(64))
    body_sha256: Mapped[str] = mapped_column(String(64), doc="sha256 of the full JSON, provenance included")
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    created: Mapped[dt.datetime] = mapped_column(default=utcnow)


class PlanRequestRow(Base):
    """A planning request as solved: its canonical JSON and the content hash that makes it idempotent."""

    __tablename__ = "plan_requests"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    profile_id: Mapped[str | None] = mapped_column(ForeignKey("profiles.id", ondelete="RESTRICT"), index=True)
    ppplan_version: Mapped[str] = mapped_column(String(32))
    cost_model_version: Mapped[str] = mapped_column(String(32))
    created: Mapped[dt.datetime] = mapped_column(default=utcnow)

    plan: Mapped[PlanRow | None] = relationship(back_populates="request", uselist=False)


class PlanRow(Base):
    """A stored Plan JSON v1 with its degrees and headline predictions as queryable columns."""

    __tablename__ = "plans"
    __table_args__ = (UniqueConstraint("request_id"), Index("ix_plans_model_gpu", "model_name", "gpu_kind"))

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("plan_requests.id", ondelete="RESTRICT"))
    model_name: Mapped[str] = mapped_column(String(200))
    gpu_kind: Mapped[str] = mapped_column(String(64))
    gpu_count: Mapped[int] = mapped_column(Integer)
    nodes: Mapped[int] = mapped_column(Integer)
    objective: Mapped[str] = mapped_column(String(32), index=True)
    weight_dtype: Mapped[str] = mapped_column(String(16))
    kv_dtype: Mapped[str] = mapped_column(String(16))
    tp: Mapped[int] = mapped_column(Integer)
    pp: Mapped[int] = mapped_column(Integer)
    replicas: Mapped[int] = mapped_column(Integer)
    micro_batches: Mapped[int] = mapped_column(Integer)
    micro_batch_size: Mapped[int] = mapped_column(Integer)
    throughput_tokens_per_s: Mapped[float] = mapped_column(Float)
    throughput_per_gpu: Mapped[float] = mapped_column(Float)
    tpot_ms: Mapped[float] = mapped_column(Float)
    ttft_ms: Mapped[float] = mapped_column(Float)
    kv_capacity_tokens: Mapped[int] = mapped_column(BigInteger)
    slo_met: Mapped[bool] = mapped_column(Boolean)
    profile_id: Mapped[str] = mapped_column(String(32), doc="provenance.profile_id (analytic profiles are not stored)")
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    created: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)

    request: Mapped[PlanRequestRow] = relationship(back_populates="plan")


class MeasurementRow(Base):
    """Stage times the executor measured while running a plan (input to calibration)."""

    __tablename__ = "measurements"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id", ondelete="RESTRICT"), index=True)
    run_id: Mapped[str | None] = mapped_column(String(64), index=True)
    stage: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(String(16))
    compute_s: Mapped[float] = mapped_column(Float)
    wait_s: Mapped[float] = mapped_column(Float)
    bytes_sent: Mapped[int] = mapped_column(BigInteger)
    peak_bytes: Mapped[int | None] = mapped_column(BigInteger)
    tokens: Mapped[int] = mapped_column(BigInteger)
    micro_batch_size: Mapped[int] = mapped_column(Integer)
    created: Mapped[dt.datetime] = mapped_column(default=utcnow)


JOB_ACTIVE = ("queued", "running")
"""Job statuses that count against the queue bound (``PPPLAN_MAX_QUEUED_JOBS``)."""


class JobRow(Base):
    """An asynchronous planning job: the request, where it stands and how it ended.

    Any server process on the store reads it, so a job submitted to one replica is polled on
    another. On PostgreSQL the job runs through the procrastinate queue (``queue_job_id`` is its id
    there); on SQLite in the server's thread pool.
    """

    __tablename__ = "plan_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True, doc="queued, running, done or failed")
    request: Mapped[dict[str, Any]] = mapped_column(JSON, doc="the PlanRequest as JSON")
    created: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    started: Mapped[dt.datetime | None] = mapped_column(doc="the last attempt's start")
    finished: Mapped[dt.datetime | None] = mapped_column()
    attempts: Mapped[int] = mapped_column(Integer, default=0, doc="runs started (more than 1: a worker died)")
    runner: Mapped[str | None] = mapped_column(String(128), doc="host:pid of the process running the last attempt")
    queue_job_id: Mapped[int | None] = mapped_column(BigInteger, doc="procrastinate's job id (PostgreSQL)")
    plan_id: Mapped[str | None] = mapped_column(String(32), doc="set when done (no foreign key: plans outlive jobs)")
    cached: Mapped[bool | None] = mapped_column(Boolean)
    http_status: Mapped[int | None] = mapped_column(Integer, doc="the status a synchronous request would have had")
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, doc="the error body when failed")

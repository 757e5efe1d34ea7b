"""jobs: the plan_jobs table; on PostgreSQL also the procrastinate task queue's schema

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04

On PostgreSQL asynchronous jobs run through procrastinate. Its tables, types and functions are
procrastinate's own ``schema.sql`` (of the pinned version, see ``pyproject.toml``), applied here so
``ppplan db upgrade`` owns the whole schema. They live in their own PostgreSQL schema
(:data:`QUEUE_SCHEMA`), out of the way of ppplan's tables. On SQLite the queue is the server's
thread pool: only the table is created.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUE_SCHEMA = "procrastinate"
"""The PostgreSQL schema of procrastinate's objects (ppplan.api.queue.pg sets it as the search path)."""


def _procrastinate_schema_sql() -> str:
    try:
        from procrastinate.schema import SchemaManager  # lazy: the postgres extra, needed on PostgreSQL only
    except ImportError:
        raise SystemExit(
            "ppplan on PostgreSQL needs its postgres extra (psycopg, procrastinate): install ppplan with it"
        ) from None
    return SchemaManager.get_schema()


def _create_queue_schema() -> None:
    bind = op.get_bind()
    path = bind.exec_driver_sql("SELECT current_setting('search_path')").scalar()
    bind.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {QUEUE_SCHEMA}")
    bind.exec_driver_sql(f"SET LOCAL search_path TO {QUEUE_SCHEMA}")
    # through the driver's cursor without parameters: the SQL has literal % signs and colons
    cursor = bind.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(_procrastinate_schema_sql())
    finally:
        cursor.close()
    # back to the caller's path: Alembic records the revision in the unqualified alembic_version
    bind.execute(sa.text("SELECT set_config('search_path', :p, true)"), {"p": path})


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "plan_jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("runner", sa.String(length=128), nullable=True),
        sa.Column("queue_job_id", sa.BigInteger(), nullable=True),
        sa.Column("plan_id", sa.String(length=32), nullable=True),
        sa.Column("cached", sa.Boolean(), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plan_jobs")),
    )
    with op.batch_alter_table("plan_jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_plan_jobs_created"), ["created"], unique=False)
        batch_op.create_index(batch_op.f("ix_plan_jobs_status"), ["status"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        _create_queue_schema()


def downgrade() -> None:
    """Revert this revision."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP SCHEMA IF EXISTS {QUEUE_SCHEMA} CASCADE")
    with op.batch_alter_table("plan_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_plan_jobs_status"))
        batch_op.drop_index(batch_op.f("ix_plan_jobs_created"))
    op.drop_table("plan_jobs")

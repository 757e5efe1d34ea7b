"""Alembic owns the schema: upgrade → downgrade → upgrade on empty and filled databases, and the ORM
models equal what the migrations build (autogenerate finds nothing)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from typer.testing import CliRunner

from ppplan.api.service import plan_and_store
from ppplan.api.store import migrate, repo
from ppplan.api.store.engine import get_engine, session_scope
from ppplan.api.store.models import Base
from ppplan.partitioner.request import PlanRequest

TABLES = {"profiles", "plan_requests", "plans", "measurements"}


def _tables(url: str) -> set[str]:
    with get_engine(url).connect() as c:
        return set(inspect(c).get_table_names()) - {"alembic_version"}


def _fill(url: str) -> str:
    with session_scope(url) as s:
        row, _ = plan_and_store(s, PlanRequest(model="llama-3.1-8b", gpus="2xH100"))
        repo.add_measurements(s, row.id, [{"stage": 0, "phase": "decode", "compute_s": 0.01, "tokens": 8}])
        return row.id


def test_head_constant_matches_scripts() -> None:
    assert migrate.head() == migrate.HEAD_REVISION


def test_upgrade_downgrade_upgrade_empty(empty_db_url: str) -> None:
    assert migrate.current(empty_db_url) is None
    migrate.upgrade(empty_db_url)
    assert _tables(empty_db_url) == TABLES and migrate.current(empty_db_url) == migrate.HEAD_REVISION
    migrate.downgrade(empty_db_url, "base")
    assert _tables(empty_db_url) == set() and migrate.current(empty_db_url) is None
    migrate.upgrade(empty_db_url)
    assert _tables(empty_db_url) == TABLES


def test_upgrade_downgrade_upgrade_filled(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url)
    pid = _fill(empty_db_url)
    migrate.downgrade(empty_db_url, "base")
    assert _tables(empty_db_url) == set()
    migrate.upgrade(empty_db_url)
    assert _fill(empty_db_url) == pid  # same request, same id, stored again on the fresh schema
    migrate.ensure_schema(empty_db_url)  # at head already: a no-op
    with session_scope(empty_db_url) as s:
        assert repo.list_plans(s)[1] == 1


def test_models_match_migrations(db_url: str) -> None:
    with get_engine(db_url).connect() as c:
        diff = compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata)
    assert diff == [], f"models and migrations disagree; write a migration: {diff}"


def test_db_cli_commands(empty_db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from ppplan.api.cli import app

    monkeypatch.setenv("PPPLAN_DATABASE_URL", empty_db_url)
    runner = CliRunner()
    res = runner.invoke(app, ["db", "upgrade"])
    assert res.exit_code == 0, res.output
    assert f"at revision {migrate.HEAD_REVISION}" in res.output
    res = runner.invoke(app, ["db", "current"])
    assert res.exit_code == 0 and f"head is {migrate.HEAD_REVISION}" in res.output
    res = runner.invoke(app, ["db", "downgrade", "base"])
    assert res.exit_code == 0 and "base (empty)" in res.output
    assert _tables(empty_db_url) == set()

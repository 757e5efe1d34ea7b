"""Alembic owns the schema: upgrade → downgrade → upgrade on empty and filled databases, the ORM
models equal what the migrations build (autogenerate finds nothing), and migrations run only on
purpose (``ppplan db upgrade``, or the announced first run of the default store)."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text
from typer.testing import CliRunner

from ppplan.api.app import create_app
from ppplan.api.service import plan_and_store
from ppplan.api.settings import Settings, default_database_url
from ppplan.api.store import migrate, repo
from ppplan.api.store.engine import dispose_engine, get_engine, session_scope
from ppplan.api.store.migrate import StoreNotReadyError
from ppplan.api.store.models import Base
from ppplan.api.store_lookup import database_url
from ppplan.partitioner.request import PlanRequest

TABLES = {"profiles", "plan_requests", "plans", "measurements", "plan_jobs"}


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


# ----------------------------------------------------------------- migrations only on purpose


def test_default_store_is_created_on_first_run_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PPPLAN_DATABASE_URL")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))  # the user data dir platformdirs picks
    url = default_database_url()
    path = tmp_path / "ppplan" / "ppplan.db"
    assert url == f"sqlite:///{path}" and not path.exists()
    try:
        assert database_url() == url
        assert migrate.current(url) == migrate.HEAD_REVISION
        assert capsys.readouterr().err == f"ppplan: created the plan store at {path} (first run)\n"
        database_url()  # the second run: nothing to create, nothing said
        assert capsys.readouterr().err == ""
    finally:
        dispose_engine(url)


def test_a_given_empty_database_is_a_user_error_and_stays_empty(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ppplan.api.cli import app

    monkeypatch.setenv("PPPLAN_DATABASE_URL", empty_db_url)
    res = CliRunner().invoke(app, ["plans", "list"])
    assert res.exit_code == 2, res.output
    err = " ".join(res.stderr.split())
    assert "ppplan db upgrade" in err and migrate.redact(empty_db_url) in err and "Traceback" not in err
    res = CliRunner().invoke(app, ["serve"])  # checked before any worker starts
    assert res.exit_code == 2 and "ppplan db upgrade" in res.stderr
    assert migrate.current(empty_db_url) is None and _tables(empty_db_url) == set()


def test_a_store_behind_the_head_is_a_user_error(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migrate, "HEAD_REVISION", "0003")  # as if a newer ppplan added a migration
    with pytest.raises(StoreNotReadyError, match=r"at schema revision 0002, behind 0003; run `ppplan db upgrade`"):
        migrate.require_head(db_url)
    with get_engine(db_url).begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
    with pytest.raises(StoreNotReadyError, match="revision ffff, which this ppplan"):
        migrate.require_head(db_url)


def test_store_errors_hide_the_password() -> None:
    url = "postgresql+psycopg://ppplan:s3cret@127.0.0.1:1/ppplan"  # nothing listens on port 1
    try:
        with pytest.raises(StoreNotReadyError) as info:
            migrate.require_head(url)
    finally:
        dispose_engine(url)
    assert "s3cret" not in str(info.value) and "ppplan:***@127.0.0.1:1/ppplan" in str(info.value)
    assert info.value.field == "database_url"


def test_service_answers_503_until_upgraded(empty_db_url: str) -> None:
    with TestClient(create_app(Settings(database_url=empty_db_url)), base_url="http://127.0.0.1") as client:
        r = client.get("/v1/plans")
        assert r.status_code == 503
        item = r.json()["detail"][0]
        assert item["field"] == "database_url" and "ppplan db upgrade" in item["message"]
        assert client.get("/readyz").status_code == 503
        assert migrate.current(empty_db_url) is None  # the service migrated nothing
        migrate.upgrade(empty_db_url)  # the operator runs `ppplan db upgrade`: no restart needed
        assert client.get("/v1/plans").status_code == 200
        assert client.get("/readyz").status_code == 200


def test_unknown_revision_is_a_user_error(db_url: str) -> None:
    from ppplan.core.errors import PpplanError

    with pytest.raises(PpplanError, match="revision: Can't locate revision"):
        migrate.upgrade(db_url, "x")
    with pytest.raises(PpplanError, match="revision: must name a revision"):
        migrate.downgrade(db_url, "")
    assert migrate.current(db_url) == migrate.HEAD_REVISION

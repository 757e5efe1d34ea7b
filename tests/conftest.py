"""Shared fixtures. Every test session stores into a temporary database (never the user's data
dir), migrated at the start like ``ppplan db upgrade`` would; ``db_url`` runs a test on SQLite and,
marked ``postgres``, on a fresh PostgreSQL database."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from ppplan.api.app import create_app
from ppplan.api.settings import Settings
from ppplan.api.store.engine import dispose_engine, session_scope
from ppplan.api.store.migrate import upgrade

PG_ENV = "PPPLAN_TEST_POSTGRES_URL"
"""Admin URL of a PostgreSQL server the tests may create databases on, e.g.
postgresql+psycopg://ppplan:ppplan@127.0.0.1:5432/postgres (.ci/run sets it)."""


@pytest.fixture(autouse=True, scope="session")
def _isolated_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """PPPLAN_DATABASE_URL points at a temporary SQLite file for the whole session, at the schema head
    (the CLI migrates only the default store by itself)."""
    for name in ("PPPLAN_API_TOKEN", "PPPLAN_ALLOWED_HOSTS"):  # a developer's shell must not turn tests into 401s
        os.environ.pop(name, None)
    old = os.environ.get("PPPLAN_DATABASE_URL")
    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'session.db'}"
    upgrade(url)
    os.environ["PPPLAN_DATABASE_URL"] = url
    yield url
    if old is None:
        os.environ.pop("PPPLAN_DATABASE_URL", None)
    else:
        os.environ["PPPLAN_DATABASE_URL"] = old


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """A reachable PostgreSQL admin URL; skips (fails under CI=true) when there is none."""
    url = os.environ.get(PG_ENV)
    if not url:
        msg = f"PostgreSQL tests need {PG_ENV} (an admin URL); .ci/run starts a server and sets it"
        if _in_ci():
            pytest.fail(msg + " — CI=true, so this is a failure, not a skip")
        pytest.skip(msg)
    try:
        eng = create_engine(url)
        with eng.connect() as c:
            c.execute(text("SELECT 1"))
        eng.dispose()
    except Exception as exc:
        msg = f"PostgreSQL at {PG_ENV} is unreachable ({exc.__class__.__name__}: {str(exc).splitlines()[0]})"
        if _in_ci():
            pytest.fail(msg + " — CI=true, so this is a failure, not a skip")
        pytest.skip(msg)
    return url


def _pg_database(admin_url: str) -> Iterator[str]:
    name = f"ppplan_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        dispose_engine(url)
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database (dropped afterwards)."""
    yield from _pg_database(pg_admin_url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    """A fresh, empty SQLite file."""
    url = f"sqlite:///{tmp_path / 'ppplan.db'}"
    yield url
    dispose_engine(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db_url(request: pytest.FixtureRequest) -> str:
    """An empty database of each kind (no schema)."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    """A database of each kind, migrated to head."""
    upgrade(empty_db_url)
    return empty_db_url


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    """A session on ``db_url``."""
    with session_scope(db_url) as s:
        yield s


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    """A TestClient on a service backed by ``db_url``."""
    with TestClient(create_app(Settings(database_url=db_url)), base_url="http://127.0.0.1") as c:
        yield c

"""Store faults: a read-only, unreachable or misconfigured store answers 503 with the JSON error body on
every route, ``/healthz`` is liveness only and ``/readyz`` checks a read and a write; every CLI command
that touches the store says what is wrong in one line (exit 2), the password hidden."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from ppplan.api.app import create_app
from ppplan.api.settings import Settings
from ppplan.api.store import migrate
from ppplan.api.store.engine import dispose_engine, get_engine, session_scope
from ppplan.api.store.faults import StoreNotReadyError, is_store_fault

BODY = {"model": "llama-3.1-8b", "gpus": "2xH100"}
UNREACHABLE = "postgresql+psycopg://ppplan:s3cret@127.0.0.1:1/ppplan"  # nothing listens on port 1
README_PLACEHOLDER = "postgresql+psycopg://user:pw@host/db"
CLI = [sys.executable, "-c", "from ppplan.api.cli import main; main()"]


def _query_only(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.execute("PRAGMA query_only=ON")


@pytest.fixture
def read_only_sqlite(sqlite_url: str) -> Iterator[str]:
    """A SQLite store at head with a plan in it, then read-only for every connection of this process.

    ``chmod`` does not make a file read-only for root (the tests run as root in CI), so the store is
    made read-only the way SQLite enforces for everyone: ``PRAGMA query_only`` on each connection.
    """
    migrate.upgrade(sqlite_url)
    with TestClient(create_app(Settings(database_url=sqlite_url)), base_url="http://127.0.0.1") as c:
        assert c.post("/v1/plans", json=BODY).status_code == 201
    dispose_engine(sqlite_url)
    event.listen(get_engine(sqlite_url), "connect", _query_only)
    yield sqlite_url
    dispose_engine(sqlite_url)


def test_chmod_does_not_make_a_store_read_only_for_root(sqlite_url: str, tmp_path: Path) -> None:
    """Why the read-only tests use ``PRAGMA query_only``: as root (CI), a chmod-ed file stays writable."""
    if os.geteuid() != 0:
        pytest.skip("only root ignores file modes")
    migrate.upgrade(sqlite_url)
    dispose_engine(sqlite_url)
    db = Path(make_url(sqlite_url).database or "")
    os.chmod(db, 0o444)
    os.chmod(db.parent, 0o555)
    try:
        migrate.probe_store(sqlite_url)  # the write succeeds: chmod does not bite
    finally:
        os.chmod(db.parent, 0o755)
        os.chmod(db, 0o644)


def _assert_503(r: Any, url: str) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/json")
    item = r.json()["detail"][0]
    assert item["field"] == "database_url"
    pw = make_url(url).password
    assert not pw or f":{pw}@" not in r.text


def test_read_only_sqlite_answers_503_json_on_writes(read_only_sqlite: str) -> None:
    with TestClient(
        create_app(Settings(database_url=read_only_sqlite)), base_url="http://127.0.0.1", raise_server_exceptions=False
    ) as c:
        plans = c.get("/v1/plans")
        assert plans.status_code == 200 and plans.json()["count"] == 1  # reads still work
        pid = plans.json()["data"][0]["id"]
        r = c.post("/v1/plans", json={**BODY, "gpus": "4xH100"})
        _assert_503(r, read_only_sqlite)
        assert "readonly" in r.json()["detail"][0]["message"]
        _assert_503(c.delete(f"/v1/plans/{pid}"), read_only_sqlite)
        m = [{"stage": 0, "phase": "decode", "compute_s": 0.01, "tokens": 8}]
        _assert_503(c.post(f"/v1/plans/{pid}/measurements", json={"rows": m}), read_only_sqlite)
        _assert_503(c.post("/v1/plans", params={"mode": "async"}, json=BODY), read_only_sqlite)
        assert c.get("/healthz").status_code == 200  # liveness: the process answers
        _assert_503(c.get("/readyz"), read_only_sqlite)


def test_readyz_reports_a_usable_store(db_url: str) -> None:
    with TestClient(create_app(Settings(database_url=db_url)), base_url="http://127.0.0.1") as c:
        r = c.get("/readyz")
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["status"] == "ready" and d["read"] == "ok" and d["write"] == "ok"
        assert d["revision"] == migrate.HEAD_REVISION
        assert d["jobs"]["queue"] in ("threads", "procrastinate") and d["jobs"]["active"] == 0
        assert c.get("/healthz").json() == {"status": "ok"}


def test_unreachable_store_answers_503_on_every_route_and_healthz_stays_up() -> None:
    try:
        with TestClient(
            create_app(Settings(database_url=UNREACHABLE)), base_url="http://127.0.0.1", raise_server_exceptions=False
        ) as c:
            assert c.get("/healthz").status_code == 200
            for method, path, kw in [
                ("GET", "/readyz", {}),
                ("GET", "/v1/plans", {}),
                ("POST", "/v1/plans", {"json": BODY}),
                ("POST", "/v1/plans?mode=async", {"json": BODY}),
                ("GET", "/v1/plans/abc", {}),
                ("DELETE", "/v1/plans/abc", {}),
                ("GET", "/v1/plans/abc/export/vllm", {}),
                ("GET", "/v1/profiles", {}),
                ("GET", "/v1/jobs/abc", {}),
            ]:
                r = c.request(method, path, **kw)
                _assert_503(r, UNREACHABLE)
                assert "127.0.0.1:1" in r.json()["detail"][0]["message"], (path, r.text)
    finally:
        dispose_engine(UNREACHABLE)


@pytest.mark.postgres
def test_wrong_password_is_503_and_one_cli_line(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    migrate.upgrade(pg_url)
    bad = make_url(pg_url).set(password="not-the-password-x9").render_as_string(hide_password=False)
    try:
        with TestClient(
            create_app(Settings(database_url=bad)), base_url="http://127.0.0.1", raise_server_exceptions=False
        ) as c:
            r = c.get("/v1/plans")
            _assert_503(r, bad)
            assert "password authentication failed" in r.json()["detail"][0]["message"]
            _assert_503(c.get("/readyz"), bad)
        from ppplan.api.cli import app

        monkeypatch.setenv("PPPLAN_DATABASE_URL", bad)
        res = CliRunner().invoke(app, ["plans", "list"])
        assert res.exit_code == 2, res.output
        assert "password authentication failed" in res.stderr and "not-the-password-x9" not in res.stderr
    finally:
        dispose_engine(bad)


@pytest.mark.postgres
def test_read_only_postgres_answers_503(pg_url: str) -> None:
    migrate.upgrade(pg_url)
    from sqlalchemy import text

    name = make_url(pg_url).database
    with get_engine(pg_url).connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'))
        conn.commit()
    dispose_engine(pg_url)
    with TestClient(
        create_app(Settings(database_url=pg_url)), base_url="http://127.0.0.1", raise_server_exceptions=False
    ) as c:
        assert c.get("/v1/plans").status_code == 200
        _assert_503(c.post("/v1/plans", json=BODY), pg_url)
        _assert_503(c.get("/readyz"), pg_url)


# --------------------------------------------------------------------------------- the CLI, one line each


STORE_COMMANDS = [
    ["db", "upgrade"],
    ["db", "downgrade", "base"],
    ["db", "current"],
    ["plans", "list"],
    ["plans", "show", "abc"],
    ["plans", "export", "abc"],
    ["plans", "delete", "abc"],
    ["plan", "llama-3.1-8b", "--gpus", "2xH100"],
    ["serve", "--port", "1"],
]


CLI_CASES = [
    *[(UNREACHABLE, args) for args in STORE_COMMANDS],
    (README_PLACEHOLDER, ["db", "upgrade"]),  # the README's placeholder: 155 lines of traceback before
    (README_PLACEHOLDER, ["plans", "list"]),
    ("mysql://ppplan:s3cret@127.0.0.1/ppplan", ["plans", "list"]),  # a dialect whose driver is missing
]


@pytest.mark.parametrize(("url", "args"), CLI_CASES, ids=lambda v: " ".join(v[:2]) if isinstance(v, list) else v[:10])
def test_cli_store_errors_are_one_line(url: str, args: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "PPPLAN_DATABASE_URL": url}
    res = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: database_url: "), res.stderr
    pw = make_url(url).password
    assert pw and pw not in res.stderr and "Traceback" not in res.stderr


def test_cli_read_only_store_is_one_line(read_only_sqlite: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from ppplan.api.cli import app

    monkeypatch.setenv("PPPLAN_DATABASE_URL", read_only_sqlite)
    with session_scope(read_only_sqlite) as s:  # the listener is on: this process sees a read-only store
        assert s.connection().exec_driver_sql("PRAGMA query_only").scalar() == 1
    res = CliRunner().invoke(app, ["plan", "llama-3.1-8b", "--gpus", "8xH100"])
    assert res.exit_code == 2, res.output
    assert "readonly" in res.stderr and "Traceback" not in res.stderr
    res = CliRunner().invoke(app, ["plans", "list"])
    assert res.exit_code == 0, res.output


def test_store_fault_classification() -> None:
    from sqlalchemy import exc as sa_exc

    assert is_store_fault(sa_exc.OperationalError("SELECT 1", {}, Exception("unable to open database file")))
    assert is_store_fault(StoreNotReadyError("database_url", rule="x"))
    assert not is_store_fault(sa_exc.IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed")))
    assert not is_store_fault(ValueError("a bug"))
    fault = migrate.store_fault(sa_exc.OperationalError("x", {}, Exception("boom\nmore")), UNREACHABLE)
    assert fault is not None and "s3cret" not in str(fault) and "(boom)" in str(fault)

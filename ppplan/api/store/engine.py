"""Engines and sessions. SQLite gets WAL, foreign keys and a busy timeout on every connection."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from ppplan.api.redact import redact
from ppplan.api.store.faults import StoreNotReadyError
from ppplan.core.errors import PpplanError

__all__ = ["dispose_engine", "dispose_engines", "get_engine", "make_engine", "session_scope"]

SQLITE_BUSY_TIMEOUT_S = 30.0
"""How long a SQLite writer waits for another writer's lock before failing."""

POOL_SIZE = 10
POOL_OVERFLOW = 40
"""Connections kept open, and opened beyond them under load (api.deps bounds sessions below the sum)."""

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cur.close()


def make_engine(url: str) -> Engine:
    """A new engine for ``url``; a SQLite file's directory is created if missing.

    Raises:
        PpplanError: ``url`` is not a SQLAlchemy URL.
        StoreNotReadyError: the URL's dialect or driver is not installed.
    """
    try:
        u = make_url(url)
    except Exception as exc:  # sqlalchemy.exc.ArgumentError, or ValueError for a bad port
        shown = redact(url)  # the URL did not parse, so only a text-level redaction can hide its password
        raise PpplanError(
            "database_url", shown, rule=f"{shown!r} is not a SQLAlchemy URL ({redact(str(exc))})"
        ) from None
    kwargs: dict[str, Any] = {}
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            path = u.database
            if u.query.get("uri") in ("true", "1") and path.startswith("file:"):  # sqlite:///file:PATH?mode=ro&uri=true
                path = path.removeprefix("file:")
            if u.query.get("mode") not in ("ro", "memory"):  # a read-only store is never created
                Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            kwargs.update(pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}
    else:
        kwargs.update(pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)
    try:
        engine = create_engine(u, **kwargs)
    except (ImportError, NoSuchModuleError) as exc:  # the dialect or its driver is not installed
        raise StoreNotReadyError(
            "database_url",
            u.drivername,
            rule=f"no SQLAlchemy dialect or driver for {u.drivername!r} is installed ({exc}); "
            "for PostgreSQL use postgresql+psycopg://… and install ppplan's postgres extra",
        ) from None
    if u.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def get_engine(url: str) -> Engine:
    """The process-wide engine for ``url`` (one pool per URL)."""
    with _lock:
        eng = _engines.get(url)
        if eng is None:
            eng = _engines[url] = make_engine(url)
        return eng


def dispose_engine(url: str) -> None:
    """Close and forget the cached engine of ``url`` (before dropping its database)."""
    with _lock:
        eng = _engines.pop(url, None)
    if eng is not None:
        eng.dispose()


def dispose_engines() -> None:
    """Close every cached engine's connections (tests, shutdown)."""
    with _lock:
        for eng in _engines.values():
            eng.dispose()
        _engines.clear()


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session on ``url``'s engine, closed on exit (commit is the caller's)."""
    factory = sessionmaker(get_engine(url), expire_on_commit=False)
    with factory() as session:
        yield session

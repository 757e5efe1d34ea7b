"""Store faults: what the service answers with 503 and the CLI with one line and exit status 2.

A fault is the store's, not the request's: the database cannot be reached, refuses the login, is
read-only, has no schema at the head, or its URL names a dialect or driver that is not installed.
This module sits below the engine (it imports nothing of ppplan's store) so the engine, the
migrations, the HTTP handlers, the CLI and the job runner share one error class and one test.
"""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

from ppplan.core.errors import PpplanError

__all__ = ["READ_ONLY_SQLSTATE", "StoreNotReadyError", "first_line", "is_store_fault"]

READ_ONLY_SQLSTATE = "25006"
"""PostgreSQL's ``read_only_sql_transaction`` (a hot standby, ``default_transaction_read_only``)."""


class StoreNotReadyError(PpplanError):
    """The store cannot be used as it is: empty, behind this ppplan's schema, unreachable, refusing
    the login, read-only, or of a dialect without its driver (CLI exit 2, HTTP 503). ``field`` is
    ``database_url``; the message names the URL without its password."""


def first_line(exc: BaseException) -> str:
    """The first line of the driver's message (the DBAPI error's, not SQLAlchemy's SQL echo)."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(orig).__name__


def _sqlstate(exc: sa_exc.DBAPIError) -> str | None:
    orig = exc.orig
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def is_store_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is the store's fault (a 503), not a bug or a request's (a 500 or a 4xx).

    Operational errors (cannot connect, bad password, locked, read-only SQLite file, disk full),
    interface errors (the connection broke), a pool that has no connection to give, a missing
    driver, and PostgreSQL's read-only transaction are faults; integrity and data errors are not.
    """
    if isinstance(exc, StoreNotReadyError):
        return True
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
        return True
    if isinstance(exc, sa_exc.NoSuchModuleError | sa_exc.DisconnectionError):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and _sqlstate(exc) == READ_ONLY_SQLSTATE

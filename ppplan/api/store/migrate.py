"""Run Alembic programmatically with the ``alembic.ini`` shipped in the ``migrations`` package, so
migrations work from an installed package and any working directory.

Migrations run only on purpose: ``ppplan db upgrade`` (:func:`upgrade`), or the first run on the
default store (:func:`ensure_schema`, called by :mod:`ppplan.api.store_lookup`). Everything else
checks the schema with :func:`require_head` and tells the user to upgrade.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import inspect, text

from ppplan.api.redact import redact
from ppplan.api.store.engine import get_engine
from ppplan.api.store.faults import StoreNotReadyError, first_line, is_store_fault
from ppplan.core.errors import NOT_GIVEN, PpplanError

__all__ = [
    "HEAD_REVISION",
    "StoreNotReadyError",
    "alembic_config",
    "current",
    "downgrade",
    "ensure_schema",
    "head",
    "probe_store",
    "redact",
    "require_head",
    "store_errors",
    "store_fault",
    "upgrade",
]

HEAD_REVISION = "0002"
"""The newest migration; a test keeps it equal to the scripts' head (a quick check without Alembic)."""


def alembic_config(url: str) -> Config:
    """An Alembic Config for ``url`` using the packaged scripts."""
    here = Path(str(resources.files("ppplan.migrations")))  # the scripts as package data, not an import
    cfg = Config(str(here / "alembic.ini"))
    cfg.set_main_option("script_location", str(here))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head() -> str:
    """The head revision of the packaged scripts."""
    rev = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    return rev or ""


def _with_connection(url: str, fn: object, *args: str) -> None:
    if not all(a.strip() for a in args):
        raise PpplanError("revision", rule="must name a revision, e.g. head, base or 0001")
    cfg = alembic_config(url)
    with get_engine(url).begin() as conn:
        cfg.attributes["connection"] = conn
        try:
            fn(cfg, *args)  # type: ignore[operator]
        except CommandError as exc:  # an unknown revision is the user's input, not a bug
            raise PpplanError("revision", args[0] if args else NOT_GIVEN, rule=str(exc)) from None


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (default the head).

    Raises:
        StoreNotReadyError: the store cannot be reached, refuses the login or is read-only.
    """
    with store_errors(url):
        _with_connection(url, command.upgrade, revision)


def downgrade(url: str, revision: str) -> None:
    """Take the database at ``url`` back to ``revision`` (``base`` drops every table).

    Raises:
        StoreNotReadyError: the store cannot be reached, refuses the login or is read-only.
    """
    with store_errors(url):
        _with_connection(url, command.downgrade, revision)


def current(url: str) -> str | None:
    """The revision the database is at, or None for an empty (never migrated) database.

    Raises:
        StoreNotReadyError: the store cannot be reached or refuses the login.
    """
    with store_errors(url), get_engine(url).connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        return row[0] if row else None


def ensure_schema(url: str) -> None:
    """Upgrade ``url`` to head unless it is there already (cheap when it is)."""
    if current(url) == HEAD_REVISION:
        return
    try:
        upgrade(url)
    except Exception:
        # another process may have migrated concurrently; only that is forgiven
        if current(url) != HEAD_REVISION:
            raise


def _known(revision: str) -> bool:
    try:
        return ScriptDirectory.from_config(alembic_config("sqlite://")).get_revision(revision) is not None
    except CommandError:
        return False


def require_head(url: str) -> None:
    """Check that the database at ``url`` is at the head revision; migrate nothing.

    Raises:
        StoreNotReadyError: the database is empty, at an older (or unknown) revision, or unreachable.
    """
    shown = redact(url)
    rev = current(url)
    if rev == HEAD_REVISION:
        return
    if rev is None:
        rule = f"the store {shown} has no schema yet; create it with `ppplan db upgrade`"
    elif _known(rev):
        rule = f"the store {shown} is at schema revision {rev}, behind {HEAD_REVISION}; run `ppplan db upgrade`"
    else:
        rule = (
            f"the store {shown} is at schema revision {rev}, which this ppplan (head {HEAD_REVISION}) does not "
            "know; use the newer ppplan that wrote it"
        )
    raise StoreNotReadyError("database_url", shown, rule=rule)


def store_fault(exc: BaseException, url: str) -> StoreNotReadyError | None:
    """``exc`` as the one-line store error naming ``url`` without its password, or None when ``exc``
    is not the store's fault (see :func:`~ppplan.api.store.faults.is_store_fault`)."""
    if isinstance(exc, StoreNotReadyError):
        return exc
    if not is_store_fault(exc):
        return None
    shown = redact(url)
    return StoreNotReadyError("database_url", shown, rule=f"cannot use the store {shown} ({redact(first_line(exc))})")


@contextmanager
def store_errors(url: str) -> Iterator[None]:
    """Turn a store fault raised inside into :class:`StoreNotReadyError`; anything else passes.

    Raises:
        StoreNotReadyError: the store at ``url`` failed (connection, login, read-only, driver).
    """
    try:
        yield
    except Exception as exc:
        fault = store_fault(exc, url)
        if fault is None or fault is exc:
            raise
        raise fault from None


@dataclass(frozen=True, slots=True)
class StoreProbe:
    """What :func:`probe_store` found: the dialect and the schema revision of a usable store."""

    dialect: str
    revision: str


def probe_store(url: str) -> StoreProbe:
    """Check that the store at ``url`` can be read and written and is at the schema head.

    The write is an ``UPDATE`` of ``alembic_version`` to its own value, rolled back: it takes the
    same locks and permissions as any write (a read-only file or server refuses it) and changes
    nothing.

    Raises:
        StoreNotReadyError: the store is unreachable, refuses the login, is read-only or not at head.
    """
    require_head(url)
    with store_errors(url), get_engine(url).connect() as conn:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        try:
            conn.execute(text("UPDATE alembic_version SET version_num = version_num"))
        finally:
            conn.rollback()
        return StoreProbe(dialect=conn.dialect.name, revision=str(revision))

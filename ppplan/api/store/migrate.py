"""Run Alembic programmatically with the ``alembic.ini`` shipped in the ``migrations`` package, so
migrations work from an installed package and any working directory.

Migrations run only on purpose: ``ppplan db upgrade`` (:func:`upgrade`), or the first run on the
default store (:func:`ensure_schema`, called by :mod:`ppplan.api.store_lookup`). Everything else
checks the schema with :func:`require_head` and tells the user to upgrade.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from ppplan.api.store.engine import get_engine
from ppplan.core.errors import PpplanError

__all__ = [
    "HEAD_REVISION",
    "StoreNotReadyError",
    "alembic_config",
    "current",
    "downgrade",
    "ensure_schema",
    "head",
    "redact",
    "require_head",
    "upgrade",
]

HEAD_REVISION = "0001"
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
    cfg = alembic_config(url)
    with get_engine(url).begin() as conn:
        cfg.attributes["connection"] = conn
        fn(cfg, *args)  # type: ignore[operator]


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (default the head)."""
    _with_connection(url, command.upgrade, revision)


def downgrade(url: str, revision: str) -> None:
    """Take the database at ``url`` back to ``revision`` (``base`` drops every table)."""
    _with_connection(url, command.downgrade, revision)


def current(url: str) -> str | None:
    """The revision the database is at, or None for an empty (never migrated) database."""
    with get_engine(url).connect() as conn:
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


class StoreNotReadyError(PpplanError):
    """The store cannot be used as it is: empty, behind this ppplan's schema, or unreachable (CLI exit
    2, HTTP 503). ``field`` is ``database_url``; the message names the URL without its password."""


def redact(url: str) -> str:
    """``url`` with its password hidden (for messages and logs)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: make_engine reports that
        return url


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
    try:
        rev = current(url)
    except OperationalError as exc:
        raise StoreNotReadyError(
            "database_url", shown, rule=f"cannot open the store {shown} ({str(exc.orig).strip().splitlines()[0]})"
        ) from None
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

"""Run Alembic programmatically with the ``alembic.ini`` shipped in the ``migrations`` package, so
migrations work from an installed package and any working directory."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from ppplan.api.store.engine import get_engine

__all__ = ["HEAD_REVISION", "alembic_config", "current", "downgrade", "ensure_schema", "head", "upgrade"]

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

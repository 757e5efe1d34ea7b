"""Alembic environment: online migrations on the connection or URL that api.store.migrate passes."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from ppplan.api.store.engine import make_engine
from ppplan.api.store.models import Base

config = context.config
target_metadata = Base.metadata
_PG_LOCK_KEY = 0x7070706C616E  # "ppplan": serialises concurrent upgrades on PostgreSQL


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
        compare_type=True,
        compare_server_default=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":  # type: ignore[attr-defined]
            connection.execute(text(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})"))  # type: ignore[attr-defined]
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate through the given connection, or open one on ``sqlalchemy.url``."""
    conn = config.attributes.get("connection")
    if conn is not None:
        _run(conn)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.connect() as connection:
            _run(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("ppplan migrations run online only: use `ppplan db upgrade`")
run_migrations_online()

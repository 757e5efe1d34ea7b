"""Alembic migrations of the ppplan store; run them with ``ppplan db upgrade`` (see api.store.migrate)."""

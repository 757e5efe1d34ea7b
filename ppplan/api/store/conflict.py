"""The store's one error, in a module of its own so the CLI can name it without importing SQLAlchemy."""

from __future__ import annotations

__all__ = ["Conflict"]


class Conflict(Exception):
    """A write that contradicts stored data (HTTP 409); ``field`` names what clashed."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name

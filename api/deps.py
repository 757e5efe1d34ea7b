"""FastAPI dependencies as ``Annotated`` aliases: ``SessionDep``, ``SettingsDep``, ``JobsDep``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from api.jobs import JobRunner
from api.settings import Settings
from api.store.engine import get_engine

__all__ = ["JobsDep", "SessionDep", "SettingsDep"]


def get_settings_dep(request: Request) -> Settings:
    """The app's settings."""
    return request.app.state.settings  # type: ignore[no-any-return]


def get_session(request: Request) -> Iterator[Session]:
    """A session on the app's database, closed after the request."""
    factory = sessionmaker(get_engine(request.app.state.settings.database_url), expire_on_commit=False)
    with factory() as session:
        yield session


def get_jobs(request: Request) -> JobRunner:
    """The app's job runner."""
    return request.app.state.jobs  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]
JobsDep = Annotated[JobRunner, Depends(get_jobs)]

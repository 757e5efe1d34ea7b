"""Service and store settings, read from ``PPPLAN_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path

from platformdirs import user_data_dir
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "default_database_url", "get_settings"]


def default_database_url() -> str:
    """A SQLite file in the user's data directory (created on first use)."""
    return f"sqlite:///{Path(user_data_dir('ppplan')) / 'ppplan.db'}"


class Settings(BaseSettings):
    """Settings of the store and the planning service."""

    model_config = SettingsConfigDict(env_prefix="PPPLAN_", extra="ignore")

    database_url: str = Field(
        default_factory=default_database_url,
        description="any SQLAlchemy URL; default a SQLite file in the user data dir",
    )
    job_workers: int = Field(2, ge=1, le=64, description="threads that run asynchronous plan jobs")
    max_jobs_kept: int = Field(1000, ge=1, description="finished jobs remembered for polling (oldest dropped)")
    max_gpus: int = Field(1024, ge=1, description="largest cluster a request over HTTP may ask for")
    allow_model_paths: bool = Field(False, description="let HTTP requests name config files on the server")


def get_settings() -> Settings:
    """Settings from the environment as it is now (not cached: tests change the environment)."""
    return Settings()

"""Service and store settings, read from ``PPPLAN_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from platformdirs import user_data_dir
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ppplan.api.security import check_token, parse_allowed_hosts

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
    max_queued_jobs: int = Field(
        64, ge=1, le=100_000, description="jobs queued or running at once, all servers together; more answer 429"
    )
    job_retry_after_s: int = Field(5, ge=1, le=3600, description="Retry-After of a 429 when the job queue is full")
    job_heartbeat_s: float = Field(
        5.0, gt=0, le=300, description="PostgreSQL: seconds between a server's queue-worker heartbeats"
    )
    job_stalled_after_s: float = Field(
        30.0, gt=0, le=3600, description="PostgreSQL: a job whose worker sent no heartbeat this long is run again"
    )
    job_max_attempts: int = Field(3, ge=1, le=100, description="runs of a job whose workers die before it fails")
    job_test_delay_s: float = Field(
        0.0, ge=0, le=600, description="testing only: seconds each job waits before solving (a slow job)"
    )
    max_gpus: int = Field(1024, ge=1, description="largest cluster a request over HTTP may ask for")
    allow_model_paths: bool = Field(False, description="let HTTP requests name config files on the server")
    api_token: SecretStr | None = Field(
        None, description="bearer token every request but /healthz, /readyz and the docs must carry; unset: none"
    )
    allowed_hosts: Annotated[tuple[str, ...] | None, NoDecode] = Field(
        None,
        description="Host names the service answers, comma-separated ('*' any, '*.example.com' subdomains); "
        "unset: the loopback names",
    )

    @field_validator("api_token", mode="before")
    @classmethod
    def _checked_token(cls, value: Any) -> Any:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        return None if value is None else check_token(str(value), "api_token")

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if value is None:
            return None
        return parse_allowed_hosts(value.split(",") if isinstance(value, str) else value)


def get_settings() -> Settings:
    """Settings from the environment as it is now (not cached: tests change the environment)."""
    return Settings()

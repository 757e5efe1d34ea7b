"""HTTP schemas, split by direction: what a client sends (``*Create``, or the domain models
PlanRequest and Profile reused as they are) and what it sees (``*Public``)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from ppplan.api.store.repo import MeasurementCreate
from ppplan.core.text import check_strings


def as_utc(t: dt.datetime) -> dt.datetime:
    """``t`` with its time zone; the store keeps naive UTC times (SQLite has no zone)."""
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


#: a time every response shows with its zone (UTC when the store returned a naive one)
UtcDatetime = Annotated[dt.datetime, AfterValidator(as_utc)]

__all__ = [
    "ErrorBody",
    "ErrorItem",
    "JobPublic",
    "MeasurementPublic",
    "MeasurementsCreate",
    "MeasurementsPublic",
    "PlanPublic",
    "PlanSummary",
    "PlansPublic",
    "ProfilePublic",
]


class ErrorItem(BaseModel):
    """One problem with a request: the field, what rule it broke, the value given."""

    field: str
    message: str
    value: Any = None
    needed_bytes: float | None = Field(None, description="infeasible plans: memory the model needs")
    available_bytes: float | None = Field(None, description="infeasible plans: memory the GPUs offer")


class ErrorBody(BaseModel):
    """Every error answer (4xx, 503, and 500 with its request id)."""

    detail: list[ErrorItem]
    request_id: str | None = Field(None, description="500 only: the id the server log names the error by")


class ProfilePublic(BaseModel):
    """A stored profile."""

    id: str
    kind: str
    model_name: str
    weight_dtype: str
    kv_dtype: str
    device: str | None
    created: UtcDatetime
    cached: bool = Field(False, description="true when this profile was already stored")
    profile: dict[str, Any] | None = Field(None, description="the Profile JSON (omitted in listings)")


class PlanPublic(BaseModel):
    """A stored plan with its Plan JSON v1."""

    id: str
    created: UtcDatetime
    cached: bool = Field(description="true when an identical request had been planned before")
    plan: dict[str, Any] = Field(description="Plan JSON v1 (docs/plan-json-v1.md)")


class PlanSummary(BaseModel):
    """A plan in a listing: its degrees and headline predictions."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    created: UtcDatetime
    model_name: str
    gpu_kind: str
    gpu_count: int
    nodes: int
    objective: str
    weight_dtype: str
    kv_dtype: str
    tp: int
    pp: int
    replicas: int
    micro_batches: int
    micro_batch_size: int
    throughput_tokens_per_s: float
    throughput_per_gpu: float
    tpot_ms: float
    ttft_ms: float
    kv_capacity_tokens: int
    slo_met: bool
    profile_id: str


class PlansPublic(BaseModel):
    """A page of plans, newest first; ``count`` is the total over all pages."""

    data: list[PlanSummary]
    count: int
    limit: int
    offset: int


class MeasurementsCreate(BaseModel):
    """Stage measurements of one executor run."""

    model_config = ConfigDict(extra="forbid")

    run_id: str | None = Field(
        None, max_length=64, description="default for rows that name none (no control characters)"
    )
    rows: list[MeasurementCreate] = Field(min_length=1, max_length=100_000)

    @model_validator(mode="before")
    @classmethod
    def _plain_text(cls, data: Any) -> Any:
        # a NUL byte in a run id cannot be stored in PostgreSQL: refused here, on every store alike
        if isinstance(data, dict):
            check_strings(data, "")
        return data


class MeasurementPublic(BaseModel):
    """A stored measurement."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    plan_id: str
    run_id: str | None
    stage: int
    phase: str
    compute_s: float
    wait_s: float
    bytes_sent: int
    peak_bytes: int | None
    tokens: int
    micro_batch_size: int
    created: UtcDatetime


class MeasurementsPublic(BaseModel):
    """Measurements of a plan."""

    plan_id: str
    stored: int | None = Field(None, description="rows stored by this request (POST only)")
    data: list[MeasurementPublic]


class JobPublic(BaseModel):
    """An asynchronous planning job."""

    id: str
    status: Literal["queued", "running", "done", "failed"]
    created: UtcDatetime
    finished: dt.datetime | None = None
    plan_id: str | None = Field(None, description="set when done: GET /v1/plans/{plan_id}")
    cached: bool | None = None
    error: ErrorBody | None = Field(None, description="set when failed")
    http_status: int | None = Field(None, description="the status a synchronous request would have had")

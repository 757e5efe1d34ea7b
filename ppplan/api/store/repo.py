"""Repository functions: plain functions over a Session. Not-found is ``None``, never an exception;
conflicts raise :class:`Conflict`; commits happen here so a caller never sees half a write."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ppplan.api.store.conflict import Conflict
from ppplan.api.store.models import MeasurementRow, PlanRequestRow, PlanRow, ProfileRow, utcnow
from ppplan.core.errors import PpplanError
from ppplan.core.profile import Profile, profile_from_data
from ppplan.partitioner.plan import Plan
from ppplan.partitioner.request import PlanRequest
from ppplan.profiler.analytic import COST_MODEL_VERSION

__all__ = [
    "Conflict",
    "MeasurementCreate",
    "PlanFilter",
    "add_measurements",
    "delete_plan",
    "get_measurements",
    "get_plan",
    "get_plan_by_hash",
    "get_profile",
    "get_profile_row",
    "list_plans",
    "ppplan_version",
    "request_hash",
    "save_plan",
    "save_profile",
]

_I64 = 2**63 - 1


def ppplan_version() -> str:
    """The installed ppplan version (part of every request hash)."""
    try:
        return version("ppplan")
    except PackageNotFoundError:
        return "0+unknown"


def _canonical(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------------------------------------- profiles


def get_profile(session: Session, profile_id: str) -> Profile | None:
    """The stored profile ``profile_id``, or None.

    Raises:
        ProfileError: the stored body is no valid profile (a NaN stored by an older version).
    """
    row = session.get(ProfileRow, profile_id)
    # checked like a file: a row stored by an older ppplan (or by hand) fails naming its field
    return None if row is None else profile_from_data(row.body, f"stored profile {profile_id}")


def get_profile_row(session: Session, profile_id: str) -> ProfileRow | None:
    """The stored profile row ``profile_id``, or None."""
    return session.get(ProfileRow, profile_id)


def save_profile(session: Session, profile: Profile) -> tuple[ProfileRow, bool]:
    """Store ``profile`` under its content id; returns (row, created).

    Raises:
        Conflict: a profile with the same id but a different provenance is already stored.
    """
    body = profile.model_dump(mode="json")
    digest = hashlib.sha256(_canonical(body).encode()).hexdigest()
    pid = profile.profile_id
    existing = session.get(ProfileRow, pid)
    if existing is None:
        row = ProfileRow(
            id=pid,
            kind=profile.kind,
            model_name=profile.model.name,
            weight_dtype=profile.weight_dtype,
            kv_dtype=profile.kv_dtype,
            device=profile.device,
            body_sha256=digest,
            body=body,
            created=utcnow(),
        )
        session.add(row)
        try:
            session.commit()
            return row, True
        except IntegrityError:  # stored concurrently
            session.rollback()
            existing = session.get(ProfileRow, pid)
            if existing is None:
                raise
    if existing.body_sha256 != digest:
        raise Conflict(
            "profile",
            f"id {pid} is already stored with a different provenance "
            f"(sha256 {existing.body_sha256[:12]} vs {digest[:12]}); the costs are identical, "
            "so use the stored id",
        )
    return existing, False


# ---------------------------------------------------------------------------------------------- plans


def request_hash(req: PlanRequest, profile_key: str | None) -> str:
    """Content hash of a request: canonical request JSON (defaults filled) with ``profile`` replaced by
    ``profile_key`` (a profile id, None = analytic), the ppplan version and the cost-model version."""
    body = req.model_dump(mode="json")
    body["profile"] = profile_key
    return hashlib.sha256(
        _canonical({"request": body, "ppplan": ppplan_version(), "cost_model": COST_MODEL_VERSION}).encode()
    ).hexdigest()


def get_plan(session: Session, plan_id: str) -> PlanRow | None:
    """The stored plan ``plan_id``, or None."""
    return session.get(PlanRow, plan_id)


def get_plan_by_hash(session: Session, content_hash: str) -> PlanRow | None:
    """The plan stored for the request with ``content_hash``, or None."""
    return session.scalars(
        select(PlanRow)
        .join(PlanRequestRow, PlanRow.request_id == PlanRequestRow.id)
        .where(PlanRequestRow.content_hash == content_hash)
    ).first()


def save_plan(
    session: Session, req: PlanRequest, plan: Plan, content_hash: str, stored_profile_id: str | None = None
) -> tuple[PlanRow, bool]:
    """Store ``plan`` for ``req`` unless a plan with ``content_hash`` exists; returns (row, created).

    Safe under concurrent identical requests: the unique content hash lets one insert win and the
    others return the winner's row.
    """
    existing = get_plan_by_hash(session, content_hash)
    if existing is not None:
        return existing, False
    d = plan.model_dump(mode="json")
    body_req = req.model_dump(mode="json")
    body_req["profile"] = stored_profile_id if req.profile is not None else None
    now = utcnow()
    rid = uuid.uuid4().hex[:16]
    request = PlanRequestRow(
        id=rid,
        content_hash=content_hash,
        body=body_req,
        profile_id=stored_profile_id,
        ppplan_version=ppplan_version(),
        cost_model_version=COST_MODEL_VERSION,
        created=now,
    )
    deg, m, c = plan.degrees, plan.metrics, plan.cluster
    row = PlanRow(
        id=content_hash[:16],
        request_id=rid,
        model_name=plan.model.name,
        gpu_kind=c.gpu,
        gpu_count=c.count,
        nodes=c.nodes,
        objective=plan.objective,
        weight_dtype=plan.weight_dtype,
        kv_dtype=plan.kv_dtype,
        tp=deg.tp,
        pp=deg.pp,
        replicas=deg.replicas,
        micro_batches=deg.micro_batches,
        micro_batch_size=deg.micro_batch_size,
        throughput_tokens_per_s=m.throughput_tokens_per_s,
        throughput_per_gpu=m.throughput_per_gpu,
        tpot_ms=m.tpot_ms,
        ttft_ms=m.ttft_ms,
        kv_capacity_tokens=min(m.kv_capacity_tokens, _I64),
        slo_met=m.slo_met,
        profile_id=plan.provenance.profile_id,
        body=d,
        created=now,
    )
    try:
        session.add(request)
        session.flush()  # the request row first: the plan's foreign key needs it
        session.add(row)
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = get_plan_by_hash(session, content_hash)
        if existing is None:
            raise
        return existing, False
    return row, True


@dataclass(slots=True, kw_only=True)
class PlanFilter:
    """Filters of :func:`list_plans`; None means no filter on that column."""

    model: str | None = None
    """model name, exact (case-insensitive)"""
    gpu: str | None = None
    """GPU catalog name, exact (case-insensitive)"""
    objective: str | None = None
    created_after: dt.datetime | None = None
    """inclusive, any timezone (compared in UTC)"""
    created_before: dt.datetime | None = None
    """exclusive"""


def _utc_naive(t: dt.datetime) -> dt.datetime:
    # SQLite keeps no zone: every stored time is UTC, compare in naive UTC there
    if not t.tzinfo:
        return t
    try:
        return t.astimezone(dt.UTC).replace(tzinfo=None)
    except OverflowError:  # 0001-01-01+14:00 lies before datetime.min in UTC: clamp, the filter still holds
        return dt.datetime.min if t.year < 5000 else dt.datetime.max


def list_plans(
    session: Session, flt: PlanFilter | None = None, *, limit: int = 50, offset: int = 0
) -> tuple[list[PlanRow], int]:
    """Plans matching ``flt``, newest first; returns (page, total count)."""
    flt = flt or PlanFilter()
    conds = []
    if flt.model:
        conds.append(func.lower(PlanRow.model_name) == flt.model.lower())
    if flt.gpu:
        conds.append(func.lower(PlanRow.gpu_kind) == flt.gpu.lower())
    if flt.objective:
        conds.append(PlanRow.objective == flt.objective)
    sqlite = session.get_bind().dialect.name == "sqlite"
    if flt.created_after:
        conds.append(PlanRow.created >= (_utc_naive(flt.created_after) if sqlite else flt.created_after))
    if flt.created_before:
        conds.append(PlanRow.created < (_utc_naive(flt.created_before) if sqlite else flt.created_before))
    total = session.scalar(select(func.count()).select_from(PlanRow).where(*conds)) or 0
    rows = session.scalars(
        select(PlanRow).where(*conds).order_by(PlanRow.created.desc(), PlanRow.id).limit(limit).offset(offset)
    ).all()
    return list(rows), int(total)


def delete_plan(session: Session, plan_id: str, *, force: bool = False) -> bool | None:
    """Delete a plan and its request; None when unknown, True when deleted.

    Raises:
        Conflict: the plan has measurements and ``force`` is false.
    """
    row = session.get(PlanRow, plan_id)
    if row is None:
        return None
    n = session.scalar(select(func.count()).select_from(MeasurementRow).where(MeasurementRow.plan_id == plan_id))
    if n and not force:
        raise Conflict("force", f"plan {plan_id} has {n} measurement(s); delete with force=true to drop them too")
    rid = row.request_id
    session.execute(delete(MeasurementRow).where(MeasurementRow.plan_id == plan_id))
    session.execute(delete(PlanRow).where(PlanRow.id == plan_id))
    session.execute(delete(PlanRequestRow).where(PlanRequestRow.id == rid))
    try:
        session.commit()
    except IntegrityError:  # measurements added concurrently (non-forced path cannot see them)
        session.rollback()
        raise Conflict("force", f"plan {plan_id} gained measurements while being deleted; retry") from None
    session.expunge_all()
    return True


# ---------------------------------------------------------------------------------------------- measurements


class MeasurementCreate(BaseModel):
    """One stage measurement from the executor. Times in seconds, sizes in bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: int = Field(ge=0, le=100_000, description="pipeline stage index (0-based)")
    phase: Literal["prefill", "decode", "ttft", "tpot"]
    compute_s: float = Field(ge=0, le=1e9, description="time the stage computed")
    wait_s: float = Field(0.0, ge=0, le=1e9, description="time the stage waited (bubble, receive)")
    bytes_sent: int = Field(0, ge=0, le=_I64, description="activation bytes sent to the next stage")
    peak_bytes: int | None = Field(None, ge=0, le=_I64, description="peak device memory of the stage")
    tokens: int = Field(ge=1, le=_I64, description="tokens processed in the measured step")
    micro_batch_size: int = Field(1, ge=1, le=2**31 - 1, description="sequences per micro-batch")
    run_id: str | None = Field(None, max_length=64, description="groups the rows of one executor run")


def add_measurements(
    session: Session, plan_id: str, rows: Iterable[MeasurementCreate | Mapping[str, Any]]
) -> int | None:
    """Store executor measurements for ``plan_id`` in one transaction; returns how many were stored,
    or None when the plan is unknown.

    Raises:
        pydantic.ValidationError: a row with a missing or invalid field.
        PpplanError: a stage index outside the plan's stages (``stage: ...``).
    """
    plan = session.get(PlanRow, plan_id)
    if plan is None:
        return None
    items = [r if isinstance(r, MeasurementCreate) else MeasurementCreate.model_validate(r) for r in rows]
    for r in items:
        if r.stage >= plan.pp:
            raise PpplanError(
                "stage", r.stage, rule=f"{r.stage} is not a stage of plan {plan_id}, which has stages 0..{plan.pp - 1}"
            )
    now = utcnow()
    session.add_all([MeasurementRow(plan_id=plan_id, created=now, **r.model_dump()) for r in items])
    try:
        session.commit()
    except IntegrityError:  # the plan was deleted concurrently
        session.rollback()
        return None
    return len(items)


def get_measurements(session: Session, plan_id: str, run_id: str | None = None) -> Sequence[MeasurementRow] | None:
    """Measurements of ``plan_id`` (optionally of one run) in insertion order, or None for an unknown plan."""
    if session.get(PlanRow, plan_id) is None:
        return None
    q = select(MeasurementRow).where(MeasurementRow.plan_id == plan_id)
    if run_id is not None:
        q = q.where(MeasurementRow.run_id == run_id)
    return session.scalars(q.order_by(MeasurementRow.id)).all()

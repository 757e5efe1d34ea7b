"""Executor measurements of a plan's stages (the calibration loop's input)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ppplan.api.deps import SessionDep
from ppplan.api.http_errors import not_found
from ppplan.api.limits import TOO_LARGE, PlanIdPath, RunIdQuery
from ppplan.api.schemas import ErrorBody, MeasurementPublic, MeasurementsCreate, MeasurementsPublic
from ppplan.api.store import repo
from ppplan.api.store.models import MeasurementRow

router = APIRouter(prefix="/plans/{plan_id}/measurements", tags=["measurements"])
_RESP: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody}, 422: {"model": ErrorBody}}


def _public(rows: list[MeasurementRow]) -> list[MeasurementPublic]:
    return [MeasurementPublic.model_validate(r) for r in rows]


@router.post("", status_code=201, response_model=MeasurementsPublic, responses={**_RESP, **TOO_LARGE})
def add_measurements(plan_id: PlanIdPath, body: MeasurementsCreate, session: SessionDep) -> MeasurementsPublic:
    """Store stage measurements of one executor run."""
    rows = [r if r.run_id is not None else r.model_copy(update={"run_id": body.run_id}) for r in body.rows]
    n = repo.add_measurements(session, plan_id, rows)
    if n is None:
        raise not_found("plan", "plan_id", plan_id)
    stored = repo.get_measurements(session, plan_id) or []
    mine = list(stored)[-n:] if n else []
    return MeasurementsPublic(plan_id=plan_id, stored=n, data=_public(mine))


@router.get("", response_model=MeasurementsPublic, responses=_RESP, operation_id="list_measurements")
def list_measurements(plan_id: PlanIdPath, session: SessionDep, run_id: RunIdQuery = None) -> MeasurementsPublic:
    """Measurements of a plan, in the order they were stored."""
    rows = repo.get_measurements(session, plan_id, run_id)
    if rows is None:
        raise not_found("plan", "plan_id", plan_id)
    return MeasurementsPublic(plan_id=plan_id, data=_public(list(rows)))

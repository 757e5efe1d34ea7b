"""Plans: create (synchronously, or as a job), fetch, list, delete, and engine exports."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from ppplan.api.deps import JobsDep, SessionDep, SettingsDep
from ppplan.api.http_errors import ApiError, not_found
from ppplan.api.limits import TOO_LARGE, GpuQuery, ModelQuery, PlanIdPath
from ppplan.api.schemas import ErrorBody, ErrorItem, JobPublic, PlanPublic, PlansPublic, PlanSummary, as_utc
from ppplan.api.service import check_http_request, plan_and_store, public_plan_body
from ppplan.api.store import repo
from ppplan.api.store.models import PlanRow
from ppplan.core.gpus import UnknownGPUError, get_gpu
from ppplan.partitioner.exports import SHELL_FORMATS, ExportFormat, render_export
from ppplan.partitioner.request import Objective, PlanRequest
from ppplan.profiler.configs import preset_name

router = APIRouter(prefix="/plans", tags=["plans"])
_ERR: dict[int | str, dict[str, Any]] = {422: {"model": ErrorBody}}
_404: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody}}


_BY_ID = {"plan_id": "$response.body#/id"}
_PLAN_LINKS = {
    "GetPlan": {"operationId": "get_plan", "parameters": _BY_ID, "description": "the plan just made"},
    "ExportPlan": {"operationId": "export_plan", "parameters": _BY_ID, "description": "its engine settings"},
    "ListMeasurements": {"operationId": "list_measurements", "parameters": _BY_ID},
    "DeletePlan": {"operationId": "delete_plan", "parameters": _BY_ID, "description": "delete it"},
}
"""OpenAPI links from a created plan to the operations on it (clients and schemathesis chain the id)."""
_JOB_LINKS = {"GetJob": {"operationId": "get_job", "parameters": {"job_id": "$response.body#/id"}}}


def _public(row: PlanRow, *, cached: bool) -> PlanPublic:
    return PlanPublic(id=row.id, created=row.created, cached=cached, plan=public_plan_body(row.body))


def _canonical(req: PlanRequest) -> PlanRequest:
    """``req`` naming its preset by the preset's own name, so that a hub id
    (``meta-llama/Llama-3.1-8B``) and the name are one request, hashed and stored once."""
    preset = preset_name(req.model)
    return req if preset is None or preset == req.model else req.model_copy(update={"model": preset})


@router.post(
    "",
    status_code=201,
    response_model=PlanPublic | JobPublic,
    responses={
        **_ERR,
        **TOO_LARGE,
        200: {"model": PlanPublic, "description": "an identical request was planned before", "links": _PLAN_LINKS},
        201: {"description": "a new plan", "links": _PLAN_LINKS},
        202: {"model": JobPublic, "description": "mode=async: poll GET /v1/jobs/{id}", "links": _JOB_LINKS},
        429: {
            "model": ErrorBody,
            "description": "mode=async: the job queue is full; retry after the Retry-After header's seconds",
            "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
        },
    },
)
def create_plan(
    req: PlanRequest,
    session: SessionDep,
    settings: SettingsDep,
    jobs: JobsDep,
    response: Response,
    mode: Literal["sync", "async"] = Query("sync", description="async: answer 202 with a job"),
) -> PlanPublic | JobPublic:
    """Plan a request (same fields as ``ppplan plan``); 201 with a new plan, 200 with the stored one."""
    req = _canonical(req)
    check_http_request(req, max_gpus=settings.max_gpus, allow_model_paths=settings.allow_model_paths)
    if mode == "async":
        response.status_code = 202
        return jobs.submit(req)
    row, created = plan_and_store(session, req)
    if not created:
        response.status_code = 200
    return _public(row, cached=not created)


@router.get("", response_model=PlansPublic, responses=_ERR)
def list_plans(
    session: SessionDep,
    model: ModelQuery = None,
    gpu: GpuQuery = None,
    objective: Objective | None = None,
    created_after: dt.datetime | None = Query(None, description="ISO 8601, inclusive"),
    created_before: dt.datetime | None = Query(None, description="ISO 8601, exclusive"),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=2**31 - 1),
) -> PlansPublic:
    """Stored plans, newest first, filtered and paginated."""
    try:
        gpu_name = get_gpu(gpu, field="gpu").name if gpu else None
    except UnknownGPUError as exc:
        raise ApiError(422, [ErrorItem(field="gpu", message=str(exc), value=gpu)]) from None
    if created_after is not None and created_before is not None and as_utc(created_after) >= as_utc(created_before):
        raise ApiError(
            422,
            [
                ErrorItem(
                    field="created_before",
                    value=created_before.isoformat(),
                    message=f"created_before: {created_before.isoformat()} must be later than "
                    f"created_after ({created_after.isoformat()})",
                )
            ],
        )
    flt = repo.PlanFilter(
        model=(preset_name(model) or model) if model else None,
        gpu=gpu_name,
        objective=objective,
        created_after=created_after,
        created_before=created_before,
    )
    rows, total = repo.list_plans(session, flt, limit=limit, offset=offset)
    data = [PlanSummary.model_validate(r) for r in rows]
    return PlansPublic(data=data, count=total, limit=limit, offset=offset)


@router.get("/{plan_id}", response_model=PlanPublic, responses={**_404, **_ERR}, operation_id="get_plan")
def get_plan(plan_id: PlanIdPath, session: SessionDep) -> PlanPublic:
    """One stored plan with its Plan JSON v1."""
    row = repo.get_plan(session, plan_id)
    if row is None:
        raise not_found("plan", "plan_id", plan_id)
    return _public(row, cached=True)


@router.delete(
    "/{plan_id}",
    operation_id="delete_plan",
    status_code=204,
    response_class=Response,
    responses={**_404, **_ERR, 409: {"model": ErrorBody, "description": "the plan has measurements"}},
)
def delete_plan(
    plan_id: PlanIdPath,
    session: SessionDep,
    force: bool = Query(False, description="also delete the plan's measurements"),
) -> Response:
    """Delete a plan (409 when it has measurements, unless force=true)."""
    if repo.delete_plan(session, plan_id, force=force) is None:
        raise not_found("plan", "plan_id", plan_id)
    return Response(status_code=204)


@router.get(
    "/{plan_id}/export/{fmt}",
    operation_id="export_plan",
    # Response (no media type): the error answers stay documented as JSON, the 200 names both kinds
    response_class=Response,
    responses={
        **_404,
        **_ERR,
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}, "application/json": {"schema": {}}},
            "description": "shell (vllm, sglang) or JSON (trtllm, torch, json)",
        },
    },
)
def export_plan(plan_id: PlanIdPath, fmt: ExportFormat, session: SessionDep) -> Response:
    """Engine settings of a stored plan: a shell snippet (vllm, sglang) or JSON (trtllm, torch, json)."""
    row = repo.get_plan(session, plan_id)
    if row is None:
        raise not_found("plan", "plan_id", plan_id)
    text = render_export(public_plan_body(row.body), fmt)
    if fmt in SHELL_FORMATS:
        return PlainTextResponse(text + "\n")
    return JSONResponse(json.loads(text))

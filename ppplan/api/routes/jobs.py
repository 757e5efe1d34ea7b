"""Asynchronous plan jobs: poll until ``done`` (then GET the plan) or ``failed`` (with the error).

Jobs are records in the store, so any server process of the store answers for a job submitted to
another (replicas behind a load balancer on one PostgreSQL)."""

from __future__ import annotations

from fastapi import APIRouter

from ppplan.api.deps import JobsDep
from ppplan.api.http_errors import not_found
from ppplan.api.limits import JobIdPath
from ppplan.api.schemas import ErrorBody, JobPublic

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get(
    "/{job_id}",
    operation_id="get_job",
    response_model=JobPublic,
    responses={
        404: {"model": ErrorBody},
        422: {"model": ErrorBody},
        503: {"model": ErrorBody, "description": "the store cannot be read"},
    },
)
def get_job(job_id: JobIdPath, jobs: JobsDep) -> JobPublic:
    """A planning job's status; ``plan_id`` once done."""
    job = jobs.get(job_id)
    if job is None:
        raise not_found("job", "job_id", job_id)
    return job

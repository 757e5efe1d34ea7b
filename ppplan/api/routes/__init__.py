"""One router per resource, combined in :data:`api_router` (mounted at ``/v1``)."""

from typing import Any

from fastapi import APIRouter

from ppplan.api.routes import jobs, measurements, plans, profiles
from ppplan.api.schemas import ErrorBody

__all__ = ["api_router"]

# answers every /v1 route can give whatever its own: a missing/wrong token, a store that is not ready
COMMON: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorBody,
        "description": "PPPLAN_API_TOKEN is set and the Authorization: Bearer header is missing or wrong",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    503: {
        "model": ErrorBody,
        "description": "the store is unreachable, read-only or not migrated (`ppplan db upgrade`)",
    },
}

api_router = APIRouter(responses=COMMON)
api_router.include_router(profiles.router)
api_router.include_router(plans.router)
api_router.include_router(measurements.router)
api_router.include_router(jobs.router)

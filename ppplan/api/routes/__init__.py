"""One router per resource, combined in :data:`api_router` (mounted at ``/v1``)."""

from fastapi import APIRouter

from ppplan.api.routes import jobs, measurements, plans, profiles

__all__ = ["api_router"]

api_router = APIRouter()
api_router.include_router(profiles.router)
api_router.include_router(plans.router)
api_router.include_router(measurements.router)
api_router.include_router(jobs.router)

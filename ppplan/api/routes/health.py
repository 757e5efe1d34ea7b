"""Liveness and database reachability."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from ppplan.api.deps import SessionDep

router = APIRouter(tags=["health"])


@router.get("/healthz", responses={503: {"description": "the database is unreachable"}})
def healthz(session: SessionDep) -> JSONResponse:
    """The service is up and its database answers."""
    try:
        session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return JSONResponse(status_code=503, content={"status": "unavailable", "database": str(exc.__class__.__name__)})
    return JSONResponse(content={"status": "ok", "database": session.get_bind().dialect.name})

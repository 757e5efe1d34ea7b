"""Profiles: store a Profile JSON (analytic or measured) and fetch it by id."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response
from sqlalchemy import func, select

from ppplan.api.deps import SessionDep
from ppplan.api.http_errors import not_found
from ppplan.api.limits import TOO_LARGE, ModelQuery, ProfileIdPath
from ppplan.api.schemas import ErrorBody, ProfilePublic
from ppplan.api.store import repo
from ppplan.api.store.models import ProfileRow
from ppplan.core.profile import Profile

router = APIRouter(prefix="/profiles", tags=["profiles"])
_ERR: dict[int | str, dict[str, Any]] = {422: {"model": ErrorBody}}


def _public(row: ProfileRow, *, cached: bool = False, body: bool = True) -> ProfilePublic:
    return ProfilePublic(
        id=row.id,
        kind=row.kind,
        model_name=row.model_name,
        weight_dtype=row.weight_dtype,
        kv_dtype=row.kv_dtype,
        device=row.device,
        created=row.created,
        cached=cached,
        profile=row.body if body else None,
    )


@router.post(
    "",
    status_code=201,
    response_model=ProfilePublic,
    responses={
        **_ERR,
        **TOO_LARGE,
        200: {"model": ProfilePublic, "description": "already stored"},
        409: {"model": ErrorBody},
    },
)
def create_profile(profile: Profile, session: SessionDep, response: Response) -> ProfilePublic:
    """Store a profile; its id is its content hash (200 if it was stored already, 409 if that id holds
    other provenance)."""
    row, created = repo.save_profile(session, profile)
    if not created:
        response.status_code = 200
    return _public(row, cached=not created)


@router.get("", response_model=list[ProfilePublic], responses=_ERR)
def list_profiles(
    session: SessionDep,
    model: ModelQuery = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=2**31 - 1),
) -> list[ProfilePublic]:
    """Stored profiles, newest first (without their bodies)."""
    q = select(ProfileRow)
    if model:
        q = q.where(func.lower(ProfileRow.model_name) == model.lower())
    rows = session.scalars(q.order_by(ProfileRow.created.desc()).limit(limit).offset(offset)).all()
    return [_public(r, body=False) for r in rows]


@router.get("/{profile_id}", response_model=ProfilePublic, responses={404: {"model": ErrorBody}, **_ERR})
def get_profile(profile_id: ProfileIdPath, session: SessionDep) -> ProfilePublic:
    """One stored profile with its JSON."""
    row = repo.get_profile_row(session, profile_id)
    if row is None:
        raise not_found("profile", "profile_id", profile_id)
    return _public(row)

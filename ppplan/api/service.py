"""Plan a request and store it, once: the use case shared by the HTTP routes, the job runner and the
CLI. No HTTP here: errors are the planner's exceptions (user errors) and the store's Conflict."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from pathlib import Path

from sqlalchemy.orm import Session

from ppplan.api.store import repo
from ppplan.api.store.models import PlanRow
from ppplan.core.profile import Profile, ProfileError
from ppplan.partitioner.plan import Plan
from ppplan.partitioner.request import PlanRequest
from ppplan.partitioner.search import PlanningError
from ppplan.profiler.configs import list_presets, preset_info
from ppplan.profiler.profile_file import load_profile
from ppplan.profiler.resolve import plan_request

__all__ = ["check_http_request", "plan_and_store", "store_cli_plan"]


def check_http_request(req: PlanRequest, *, max_gpus: int, allow_model_paths: bool) -> None:
    """Rules that apply to requests over HTTP only: no server-side files, a bounded cluster size.

    Raises:
        PlanningError: naming the field, the value and the rule.
    """
    if not allow_model_paths and preset_info(req.model.strip().lower()) is None:
        raise PlanningError(
            "model",
            rule=f"{req.model!r} is not a bundled preset; over HTTP the model must be one "
            f"of {', '.join(p.name for p in list_presets())} (config files are not read "
            "from the server's disk)",
        )
    if req.gpu_count > max_gpus:
        raise PlanningError("gpus", rule=f"{req.gpu_count} GPUs exceed this service's limit of {max_gpus} per request")


_PROFILES: OrderedDict[str, Profile] = OrderedDict()
_PROFILES_LOCK = threading.Lock()
_PROFILES_KEPT = 64


def _stored_profile(session: Session, profile_id: str) -> Profile | None:
    # a profile id is its content hash, so a parsed profile never goes stale: keep the recent ones
    with _PROFILES_LOCK:
        if profile_id in _PROFILES:
            _PROFILES.move_to_end(profile_id)
            return _PROFILES[profile_id]
    prof = repo.get_profile(session, profile_id)
    if prof is not None:
        with _PROFILES_LOCK:
            _PROFILES[profile_id] = prof
            while len(_PROFILES) > _PROFILES_KEPT:
                _PROFILES.popitem(last=False)
    return prof


def plan_and_store(session: Session, req: PlanRequest) -> tuple[PlanRow, bool]:
    """Plan ``req`` (``profile`` a stored profile id or None) and store it; returns (row, created).

    A request whose content hash is stored returns the stored plan without solving again.

    Raises:
        ProfileError: ``profile`` is not a stored profile id.
        PlanningError, InfeasibleError, ModelConfigError: from the planner.
    """
    h = repo.request_hash(req, req.profile)
    hit = repo.get_plan_by_hash(session, h)
    if hit is not None:  # the hash covers the profile id, so the profile exists
        return hit, False
    profile = None
    if req.profile is not None:
        profile = _stored_profile(session, req.profile)
        if profile is None:
            raise ProfileError(
                "profile",
                rule=f"{req.profile!r} is not a stored profile id; POST the profile to "
                "/v1/profiles first and pass its id (files are not read over HTTP)",
            )
    session.rollback()  # end the read snapshot before the long solve
    plan = plan_request(req, profile)
    return repo.save_plan(session, req, plan, h, req.profile)


def store_cli_plan(session: Session, req: PlanRequest, plan: Plan, profile: Profile | None = None) -> PlanRow:
    """Store a plan the CLI solved, with the profile it was made with.

    The profile (``profile``, or the file ``req.profile`` names when ``profile`` is None) is stored
    before the plan row that references it, whether it came from a file, the shipped profiles or the
    store, so the plan and an HTTP request with that profile's id share one content hash.

    Raises:
        ProfileError: ``req.profile`` names no file and no ``profile`` was given.
    """
    pid: str | None = None
    if req.profile is not None:
        if profile is None:
            profile = _cli_profile(session, req.profile)
        # same costs stored with another provenance: reuse that row
        with contextlib.suppress(repo.Conflict):
            repo.save_profile(session, profile)
        pid = profile.profile_id
    row, _ = repo.save_plan(session, req, plan, repo.request_hash(req, pid), pid)
    return row


def _cli_profile(session: Session, name: str) -> Profile:
    if Path(name).is_file():
        return load_profile(name)
    prof = _stored_profile(session, name)
    if prof is None:
        raise ProfileError("profile", name, rule="is neither a profile file nor a stored profile id")
    return prof

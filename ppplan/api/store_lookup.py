"""The CLI's door to the store (imported lazily by ``api.cli``): save a plan, find a stored profile."""

from __future__ import annotations

from ppplan.api.settings import get_settings
from ppplan.api.store.engine import session_scope
from ppplan.api.store.migrate import ensure_schema
from ppplan.core.profile import Profile, ProfileError
from ppplan.partitioner.plan import Plan
from ppplan.partitioner.request import PlanRequest

__all__ = ["database_url", "find_profile", "save_plan_from_cli"]


def database_url() -> str:
    """The store's URL (``PPPLAN_DATABASE_URL`` or the local SQLite file), migrated to head."""
    url = get_settings().database_url
    ensure_schema(url)
    return url


def save_plan_from_cli(req: PlanRequest, plan: Plan) -> str:
    """Store a plan the CLI solved (idempotent by content hash) and return its id."""
    from ppplan.api.service import store_cli_plan

    with session_scope(database_url()) as session:
        return store_cli_plan(session, req, plan).id


def find_profile(id: str) -> Profile:
    """The stored profile ``id``.

    Raises:
        ProfileError: no stored profile has that id (and it is not a file).
    """
    from ppplan.api.store import repo

    with session_scope(database_url()) as session:
        prof = repo.get_profile(session, id)
    if prof is None:
        from ppplan.profiler.bundled import bundled_profiles

        raise ProfileError(
            "profile",
            rule=f"{id!r} is neither a file, a stored profile id (see GET /v1/profiles) nor a "
            f"shipped measured profile ({', '.join(bundled_profiles())})",
        )
    return prof

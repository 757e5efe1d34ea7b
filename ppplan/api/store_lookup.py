"""The CLI's door to the store (imported lazily by ``api.cli``): open the store, save a plan, find a
stored profile.

Opening the store migrates nothing, with one exception said out loud: the first run on the default
SQLite file (no ``PPPLAN_DATABASE_URL``) creates that file at the head revision and prints one line
on stderr. Any other store that is not at the head is a user error telling to run ``ppplan db upgrade``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import make_url

from ppplan.api.service import store_cli_plan
from ppplan.api.settings import default_database_url, get_settings
from ppplan.api.store import repo
from ppplan.api.store.engine import session_scope
from ppplan.api.store.migrate import ensure_schema, require_head
from ppplan.core.profile import Profile, ProfileError
from ppplan.partitioner.plan import Plan
from ppplan.partitioner.request import PlanRequest
from ppplan.profiler.bundled import bundled_profiles

__all__ = ["database_url", "find_profile", "open_store", "save_plan_from_cli"]


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _fresh_default_file(url: str) -> Path | None:
    """The default store's file when ``url`` is the default store and that file is missing or empty."""
    if url != default_database_url():
        return None
    path = Path(make_url(url).database or "").expanduser()
    if path.exists() and path.stat().st_size > 0:
        return None
    return path


def open_store(url: str, *, announce: Callable[[str], None] = _to_stderr) -> None:
    """Make sure the store at ``url`` is usable: create the default store on its first run (and
    ``announce`` that in one line), otherwise only check that its schema is at the head.

    Raises:
        StoreNotReadyError: a store that is empty, behind the head or unreachable (run ``ppplan db upgrade``).
    """
    fresh = _fresh_default_file(url)
    if fresh is None:
        require_head(url)
        return
    ensure_schema(url)
    announce(f"ppplan: created the plan store at {fresh} (first run)")


def database_url() -> str:
    """The store's URL (``PPPLAN_DATABASE_URL`` or the default SQLite file), checked by :func:`open_store`.

    Raises:
        StoreNotReadyError: the store is not at the head revision (run ``ppplan db upgrade``).
    """
    url = get_settings().database_url
    open_store(url)
    return url


def save_plan_from_cli(req: PlanRequest, plan: Plan, profile: Profile | None = None) -> str:
    """Store a plan the CLI solved (idempotent by content hash) and return its id.

    Args:
        req: the request as the CLI built it (``profile`` as the user spelled it).
        plan: the solved plan.
        profile: the profile ``req.profile`` resolved to (a file, a shipped or a stored profile); it
            is stored too, before the plan that references it.
    """
    with session_scope(database_url()) as session:
        return store_cli_plan(session, req, plan, profile).id


def find_profile(id: str) -> Profile:
    """The stored profile ``id``.

    Raises:
        ProfileError: no stored profile has that id (and it is not a file).
    """
    with session_scope(database_url()) as session:
        prof = repo.get_profile(session, id)
    if prof is None:
        raise ProfileError(
            "profile",
            rule=f"{id!r} is neither a file, a stored profile id (see GET /v1/profiles) nor a "
            f"shipped measured profile ({', '.join(bundled_profiles())})",
        )
    return prof

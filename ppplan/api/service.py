"""Plan a request and store it, once: the use case shared by the HTTP routes, the job runner and the
CLI. No HTTP here: errors are the planner's exceptions (user errors) and the store's Conflict."""

from __future__ import annotations

import contextlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from ppplan.api.store import repo
from ppplan.api.store.models import PlanRow
from ppplan.core.model_source import ModelSource
from ppplan.core.profile import Profile, ProfileError
from ppplan.partitioner.plan import Plan
from ppplan.partitioner.request import PlanRequest
from ppplan.partitioner.search import PlanningError, plan_model
from ppplan.profiler.configs import INLINE_SOURCE, ModelConfig, list_presets, load_model_config, preset_name
from ppplan.profiler.profile_file import load_profile
from ppplan.profiler.resolve import plan_request, resolve_inputs

__all__ = ["PATH_SOURCE", "check_http_request", "plan_and_store", "public_plan_body", "store_cli_plan"]

PATH_SOURCE = "path:"
"""Prefix of the ``model_source`` (and stored ``model``) of a plan made over HTTP from a config file: the
config's content hash follows, never the server path."""


def public_plan_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """A stored Plan JSON as an HTTP answer may show it: without a filesystem path.

    A plan the CLI stored from a config file keeps the file's path in ``model_source`` (``ppplan run``
    loads the model from it) and in its exports' commands; in an answer every occurrence of that path,
    and the request's ``model``, become ``path:<config hash>``, as for a plan made over HTTP.
    """
    source = str(body.get("model_source", ""))
    if not source or source.startswith(("preset:", PATH_SOURCE, INLINE_SOURCE)) or "model" not in body:
        return dict(body)
    ident = f"{PATH_SOURCE}{body['model']['config_hash']}"
    # replaced in the JSON text, so the path goes wherever it was copied (commands, notes), escaped alike
    text = json.dumps(body).replace(json.dumps(source)[1:-1], ident)
    # the engines load a config's folder, not the file: the exports name the folder too
    folder = source.rsplit("/", 1)[0] if source.lower().endswith(".json") and "/" in source else ""
    if folder not in ("", ".", "~"):
        text = text.replace(json.dumps(folder)[1:-1], ident)
    out: dict[str, Any] = json.loads(text)
    if isinstance(out.get("request"), dict):
        out["request"]["model"] = ident
    return out


def check_http_request(req: PlanRequest, *, max_gpus: int, allow_model_paths: bool) -> None:
    """Rules that apply to requests over HTTP only: no server-side files, a bounded cluster size.

    Raises:
        PlanningError: naming the field, the value and the rule.
    """
    if not allow_model_paths and req.hf_config is None and preset_name(req.model) is None:
        raise PlanningError(
            "model",
            rule=f"{req.model!r} is not a bundled preset; over HTTP the model must be one "
            f"of {', '.join(p.name for p in list_presets())} (config files are not read "
            "from the server's disk: send the config itself as hf_config)",
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
    ident, cfg = _http_identity(req)
    h = repo.request_hash(ident, req.profile)
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
    plan = plan_request(req, profile) if cfg is None else _plan_config_file(req, ident, cfg, profile)
    return repo.save_plan(session, ident, plan, h, req.profile)


def _http_identity(req: PlanRequest) -> tuple[PlanRequest, ModelConfig | None]:
    """``req`` as it is hashed, stored and answered, and the config file it names (None for a preset).

    A config file (allowed over HTTP only with ``allow_model_paths``) is named by its content,
    ``path:<config hash>``, in the stored request and the plan's ``model_source``: answers never show a
    server path, and one config under two paths is one plan.

    Raises:
        ModelConfigError: the model is neither a preset nor a readable config.
    """
    if req.hf_config is not None or preset_name(req.model) is not None:  # sent along, or a preset
        return req, None
    cfg = load_model_config(req.model)
    if cfg.source.startswith("preset:"):  # the loader's word on what is a preset is final
        return req, None
    return req.model_copy(update={"model": f"{PATH_SOURCE}{cfg.config_hash}"}), cfg


def _plan_config_file(req: PlanRequest, ident: PlanRequest, cfg: ModelConfig, profile: Profile | None) -> Plan:
    """Plan a config-file request under its content identity ``ident`` (see :func:`_http_identity`)."""
    prof, _ = resolve_inputs(req, profile)  # reads the file again: it must still be the config hashed
    if prof.model.config_hash != cfg.config_hash:
        raise PlanningError("model", rule="the config file changed while the request was planned; send it again")
    return plan_model(ident, prof, ModelSource(source=ident.model))


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

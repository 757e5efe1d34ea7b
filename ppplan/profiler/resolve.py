"""Resolve what a plan request names (a preset or a config file, an optional profile) into the plain
inputs the pure partitioner takes: a checked :class:`Profile` and a :class:`ModelSource`."""

from __future__ import annotations

from typing import cast

from ppplan.core.model_source import ModelSource
from ppplan.core.profile import Profile
from ppplan.partitioner.cluster import parse_cluster_gpus
from ppplan.partitioner.plan import Plan
from ppplan.partitioner.request import PlanRequest
from ppplan.partitioner.search import PlanningError, plan_model
from ppplan.profiler.analytic import analytic_profile, model_spec
from ppplan.profiler.configs import INLINE_SOURCE, ModelConfig, config_from_dict, load_model_config, preset_info

__all__ = ["model_source", "plan_request", "resolve_inputs"]


def model_source(cfg: ModelConfig) -> ModelSource:
    """The source of a loaded config, with the preset index's hub id and checkpoint dtype."""
    info = preset_info(cfg.source.removeprefix("preset:")) if cfg.source.startswith("preset:") else None
    repo = info.hf_repo if info else None
    if cfg.source.startswith(INLINE_SOURCE):  # an uploaded config: the engines load what it names
        named = cfg.raw.get("_name_or_path")
        repo = named if isinstance(named, str) and named.strip() else cfg.name
    return ModelSource(
        source=cfg.source,
        hf_repo=repo,
        published_checkpoint_dtype=info.published_checkpoint_dtype if info else None,
    )


def resolve_inputs(req: PlanRequest, profile: Profile | None = None) -> tuple[Profile, ModelSource]:
    """The profile to plan ``req`` with and the model's source.

    Args:
        req: the validated request; ``req.model`` is a preset name or a config path.
        profile: a measured or analytic profile the user chose; default the analytic profile of
            ``req.model`` at the requested dtypes.

    Raises:
        ModelConfigError: the model cannot be loaded.
        PlanningError: the profile is for another model or other dtypes.
    """
    cfg = config_from_dict(req.hf_config, req.model) if req.hf_config is not None else load_model_config(req.model)
    source = model_source(cfg)
    if profile is None:
        base = analytic_profile(model_spec(cfg), req.weight_dtype, req.kv_dtype)
        if req.kernel_db is not None:
            base = _with_kernel_db(req, base)
        return base, source
    if req.kernel_db is not None:
        raise PlanningError(
            "kernel_db",
            req.kernel_db,
            rule="takes the times from the measured kernel tables; it cannot be combined with a profile",
        )
    if profile.model.config_hash != cfg.config_hash:
        raise PlanningError(
            "profile",
            rule=f"profile {profile.label} is for model {profile.model.name!r} "
            f"(config {profile.model.config_hash[:12]}), not {req.model!r} "
            f"(config {cfg.config_hash[:12]})",
        )
    if profile.weight_dtype != req.weight_dtype or profile.kv_dtype != req.kv_dtype:
        raise PlanningError(
            "weight_dtype",
            rule=f"profile {profile.label} was made for weights "
            f"{profile.weight_dtype} and KV {profile.kv_dtype}; the request asks for "
            f"{req.weight_dtype} and {req.kv_dtype}",
        )
    return profile, source


def _with_kernel_db(req: PlanRequest, base: Profile) -> Profile:
    """``base`` with kernel-table coefficients for every GPU kind of the request's cluster."""
    from ppplan.profiler.kerneldb import require_extra  # lazy: optional extra
    from ppplan.profiler.kerneldb_fit import kerneldb_profile  # lazy: optional extra

    require_extra()
    kinds = sorted({g.gpu.name for g in parse_cluster_gpus(req.gpus, req.nodes).groups})
    return cast(Profile, kerneldb_profile(base, kinds, req.engine or "vllm"))


def plan_request(req: PlanRequest, profile: Profile | None = None) -> Plan:
    """Resolve ``req``'s model (and check ``profile``) and plan it: the whole planning step.

    Raises:
        ModelConfigError, PlanningError, InfeasibleError: as :func:`resolve_inputs` and
            :func:`ppplan.partitioner.search.plan_model`.
    """
    prof, source = resolve_inputs(req, profile)
    return plan_model(req, prof, source)

"""Launch settings for the engines, from a Plan. The partition is always explicit: the engines'
defaults differ from each other (see :mod:`partitioner.baselines`).

Per engine: :mod:`exports_vllm`, :mod:`exports_sglang`, :mod:`exports_trtllm`; what they read from
the plan: :mod:`exports_layout`. Every printed flag is checked against the engines' own parsers
(tests/test_engine_parsers.py, golden files in tests/data/engines/).
"""

from __future__ import annotations

import json
from typing import Any, Literal, get_args

from ppplan.core.errors import PpplanError
from ppplan.partitioner.exports_layout import read_deployment
from ppplan.partitioner.exports_sglang import sglang_export
from ppplan.partitioner.exports_trtllm import trtllm_export
from ppplan.partitioner.exports_vllm import vllm_export

__all__ = ["ENGINE_FORMATS", "EXPORT_FORMATS", "SHELL_FORMATS", "ExportFormat", "export_plan", "render_export"]

ExportFormat = Literal["vllm", "sglang", "trtllm", "torch", "json"]
"""a format :func:`render_export` knows (the type for request validation)"""
EXPORT_FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)
"""every format :func:`render_export` knows, in the order help texts list them"""
ENGINE_FORMATS: tuple[ExportFormat, ...] = tuple(f for f in EXPORT_FORMATS if f != "json")
"""the engines' and torch's settings: every format but the whole plan as JSON"""
SHELL_FORMATS: tuple[ExportFormat, ...] = ("vllm", "sglang")
"""formats rendered as shell lines (export the partition variable, then the launch command); the rest are JSON"""


def export_plan(plan: dict[str, Any], model_ref: str) -> dict[str, dict[str, Any]]:
    """Every engine's settings for ``plan`` (a Plan as a JSON dict), keyed by format name.

    vllm and sglang: ``args``, ``env`` and ``command`` of the head launch (node rank 0 of the first
    instance), ``per_node`` (every launch in pipeline order: node, node rank, stages, local GPUs,
    env, args, command) and ``notes``; trtllm: ``llm_args`` (+ ``command``, ``notes``); torch:
    ``stages`` (module names per stage).

    Args:
        plan: the plan as a JSON dict.
        model_ref: what the engines load (a hub id or a model directory), see
            :attr:`ppplan.core.model_source.ModelSource.engine_ref`; a config.json path is replaced
            by its directory (with a note).
    """
    dep = read_deployment(plan, model_ref)
    return {
        "vllm": vllm_export(dep),
        "sglang": sglang_export(dep),
        "trtllm": trtllm_export(dep),
        "torch": {
            "stages": [list(s["modules"]) for s in plan["stages"]],
            "note": "module names per stage for torch.distributed.pipelining / torchtitan "
            "(e.g. pipeline_module_split); the same names the executor materialises",
        },
    }


def _render_shell(e: dict[str, Any]) -> str:
    """Notes as comments, then each node's exports and command (one block per node when several)."""
    lines = [f"# {n}" for n in e.get("notes", [])]
    nodes = e.get("per_node") or []
    if len(nodes) <= 1:
        env = nodes[0]["env"] if nodes else e["env"]
        return "\n".join([*lines, *(f"export {k}={v}" for k, v in env.items()), e["command"]])
    for n in nodes:
        stages = ",".join(str(k) for k in n["stages"])
        lines.append(
            f"# instance {n['instance']}, node {n['node']} ({n['gpu']}), node-rank {n['node_rank']}: stages {stages}"
        )
        lines += [f"export {k}={v}" for k, v in n["env"].items()]
        lines.append(n["command"])
    return "\n".join(lines)


def render_export(plan: dict[str, Any], fmt: str) -> str:
    """Text of one export format: shell lines (vllm, sglang: export the partition variable, then the
    launch command), JSON (trtllm, torch, json).

    Raises:
        PpplanError: unknown format, naming the known ones.
    """
    if fmt not in EXPORT_FORMATS:
        raise PpplanError("format", rule=f"{fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "json":
        return json.dumps(plan, indent=1)
    ex = plan.get("exports") or export_plan(plan, str(plan["model_source"]).removeprefix("preset:"))
    e = ex[fmt]
    if fmt in SHELL_FORMATS:
        return _render_shell(e)
    if fmt == "trtllm":
        return json.dumps(e["llm_args"], indent=1)
    return json.dumps(e["stages"], indent=1)

"""``ppplan partition``: the exact cut of the user's own per-unit costs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from ppplan.api.cli.common import console, fail, user_errors

__all__ = ["commands"]

commands = typer.Typer()


def _floats(field: str, text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        fail(f"{field}: {text!r} must be comma-separated numbers, e.g. 1,1,2")
    return None


@commands.command()
@user_errors
def partition(
    costs: Annotated[Path, typer.Option(help='JSON file {"time": [...], "memory": [...]} per unit')],
    stages: Annotated[int, typer.Option(help="number of stages")],
    memory_limit: Annotated[float | None, typer.Option(help="bytes a stage may hold")] = None,
    solver: Annotated[str, typer.Option(help="dp (exact, default) or cpsat (OR-Tools, cross-check)")] = "dp",
    stage_speed: Annotated[str | None, typer.Option(help="time multiplier per stage, e.g. 1,1,2")] = None,
    stage_memory_limit: Annotated[str | None, typer.Option(help="bytes per stage, e.g. 80e9,80e9,40e9")] = None,
    time_limit: Annotated[float, typer.Option(help="cpsat: search time limit, seconds")] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Exact contiguous partition of your own per-unit costs (min slowest stage under a memory limit)."""
    from ppplan.partitioner.dp import PartitionProblem, solve_partition

    if solver not in ("dp", "cpsat"):
        fail(f"solver: {solver!r} is not one of dp, cpsat")
    if not (math.isfinite(time_limit) and time_limit > 0):
        fail(f"time_limit: must be a finite number of seconds > 0, got {time_limit!r}")
    if not costs.is_file():
        fail(f"costs: {str(costs)!r} is not a readable file")
    try:
        data = json.loads(costs.read_text())
    except json.JSONDecodeError as exc:
        fail(f"costs: {str(costs)!r} is not valid JSON ({exc})")
    if not isinstance(data, dict) or not isinstance(data.get("time"), list):
        fail(f"costs: {str(costs)!r} must be an object with a 'time' list (and optionally 'memory')")
    for key in ("time", "memory"):
        vals = data.get(key)
        if vals is None:
            continue
        if not isinstance(vals, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
            fail(f"costs.{key}: must be a list of numbers")
    pr = PartitionProblem(
        time=tuple(float(x) for x in data["time"]),
        stages=stages,
        memory=tuple(float(x) for x in data["memory"]) if data.get("memory") is not None else None,
        memory_limit=memory_limit,
        stage_speed=_floats("stage_speed", stage_speed),
        stage_memory_limit=_floats("stage_memory_limit", stage_memory_limit),
    )
    out: dict[str, Any]
    if solver == "cpsat":
        from ppplan.partitioner.cpsat import solve_partition_cpsat

        cp = solve_partition_cpsat(pr, time_limit_s=time_limit)
        ok = cp.status in ("optimal", "feasible")
        out = {
            "sizes": list(cp.sizes) if ok else None,
            "bottleneck": cp.bottleneck if ok else None,
            "optimal": cp.status == "optimal",
            "status": cp.status,
            "bound": cp.bound,
            "gap": cp.gap,
            "solver": "cpsat",
            "wall_s": cp.wall_s,
        }
        if not ok:
            out["reason"] = cp.reason
    else:
        res = solve_partition(pr)
        ok = res.optimal
        out = {
            "sizes": list(res.sizes) if ok else None,
            "bottleneck": res.bottleneck if ok else None,
            "optimal": ok,
            "status": res.status,
            "solver": "dp",
            "stage_times": list(res.stage_times),
            "stage_memory": list(res.stage_memory),
        }
        if not ok:
            # your numbers carry your units: say them as given, not as GiB
            if res.worst_stage is not None:
                a, b = int(res.detail["first_unit"]), int(res.detail["last_unit"])
                out["reason"] = (
                    f"stage {res.worst_stage} (units {a}-{b}) needs {res.needed_bytes:g}, limit "
                    f"{res.limit_bytes:g}, in the cut into {stages} stages that overshoots least"
                )
            elif "unit" in res.detail:
                out["reason"] = (
                    f"unit {int(res.detail['unit'])} alone needs {res.needed_bytes:g}, limit {res.limit_bytes:g}"
                )
            else:
                out["reason"] = res.reason
    if as_json:
        print(json.dumps(out))
        if not ok:
            raise typer.Exit(1)
        return
    if not ok:
        fail(f"{out['status']}: {out['reason']}", code=1)
    console.print(f"sizes {out['sizes']}, bottleneck {out['bottleneck']:g}, {out['status']} ({solver})")
    from ppplan.partitioner.dp import stage_bounds

    for k, (a, b) in enumerate(stage_bounds(out["sizes"])):
        console.print(f"  stage {k}: units {a}-{b}")

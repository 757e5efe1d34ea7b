"""``ppplan partition``: the exact cut of the user's own per-unit costs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ppplan.api.cli.common import console, fail, positive_finite, user_errors
from ppplan.partitioner.dp import solve_partition
from ppplan.partitioner.problem import MAX_UNITS, PartitionProblem, PartitionSolution, stage_bounds
from ppplan.profiler.files import read_input_text

__all__ = ["commands"]

commands = typer.Typer()

SOLVERS = ("dp", "cpsat")
MAX_TIME_LIMIT_S = 3600.0
"""longest CP-SAT search the command allows, seconds"""


def _floats(field: str, text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        fail(f"{field}: {text!r} must be comma-separated numbers, e.g. 1,1,2")
    return None


def _load_costs(costs: Path) -> dict[str, Any]:
    """The costs file as a dict with a 'time' list and an optional 'memory' list, all numbers."""
    text = read_input_text(costs, "costs")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        fail(escape(f"costs: {str(costs)!r} is not valid JSON ({str(exc)[:200]})"))
    if not isinstance(data, dict) or not isinstance(data.get("time"), list):
        fail(f"costs: {str(costs)!r} must be an object with a 'time' list (and optionally 'memory')")
    for key in ("time", "memory"):
        vals = data.get(key)
        if vals is None:
            continue
        if not isinstance(vals, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
            fail(f"costs.{key}: must be a list of numbers")
    return data


def _solve(pr: PartitionProblem, solver: str, time_limit: float) -> PartitionSolution:
    if solver == "cpsat":
        from ppplan.partitioner.cpsat import solve_partition_cpsat  # lazy: ortools is heavy, dp is the default

        return solve_partition_cpsat(pr, time_limit_s=time_limit)
    return solve_partition(pr)


def _user_units_reason(sol: PartitionSolution, stages: int) -> str | None:
    """The DP's reason in the units of the user's numbers (as given, not as GiB)."""
    miss = sol.shortfall
    if miss is None:
        return sol.reason
    if miss.stage is None:
        return f"unit {miss.first_unit} alone needs {miss.needed_bytes:g}, limit {miss.limit_bytes:g}"
    return (
        f"stage {miss.stage} (units {miss.first_unit}-{miss.last_unit}) needs {miss.needed_bytes:g}, limit "
        f"{miss.limit_bytes:g}, in the cut into {stages} stages that overshoots least"
    )


def _as_json(sol: PartitionSolution, stages: int) -> dict[str, Any]:
    """The command's JSON: the same keys as ever for each solver."""
    ok = sol.has_cut
    out: dict[str, Any] = {
        "sizes": list(sol.sizes) if ok else None,
        "bottleneck": sol.bottleneck if ok else None,
        "optimal": sol.optimal,
        "status": sol.status,
    }
    if sol.solver == "cpsat":
        out |= {"bound": sol.bound, "gap": sol.gap, "solver": "cpsat", "wall_s": sol.wall_s}
        if not ok:
            out["reason"] = sol.reason
        return out
    out |= {"solver": "dp", "stage_times": list(sol.stage_times), "stage_memory": list(sol.stage_memory)}
    if not ok:
        out["reason"] = _user_units_reason(sol, stages)
    return out


@commands.command()
@user_errors
def partition(
    costs: Annotated[Path, typer.Option(help='JSON file {"time": [...], "memory": [...]} per unit')],
    stages: Annotated[int, typer.Option(help="number of stages", min=1, max=MAX_UNITS)],
    memory_limit: Annotated[
        float | None, typer.Option(help="bytes a stage may hold", callback=positive_finite("memory_limit"))
    ] = None,
    solver: Annotated[str, typer.Option(help="dp (exact, default) or cpsat (OR-Tools, cross-check)")] = "dp",
    stage_speed: Annotated[str | None, typer.Option(help="time multiplier per stage, e.g. 1,1,2")] = None,
    stage_memory_limit: Annotated[str | None, typer.Option(help="bytes per stage, e.g. 80e9,80e9,40e9")] = None,
    time_limit: Annotated[
        float,
        typer.Option(
            help=f"cpsat: search time limit, seconds (at most {MAX_TIME_LIMIT_S:g})",
            callback=positive_finite("time_limit", MAX_TIME_LIMIT_S),
        ),
    ] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Exact contiguous partition of your own per-unit costs (min slowest stage under a memory limit)."""
    if solver not in SOLVERS:
        fail(f"solver: {solver!r} is not one of {', '.join(SOLVERS)}")
    data = _load_costs(costs)
    pr = PartitionProblem(
        time=tuple(float(x) for x in data["time"]),
        stages=stages,
        memory=tuple(float(x) for x in data["memory"]) if data.get("memory") is not None else None,
        memory_limit=memory_limit,
        stage_speed=_floats("stage_speed", stage_speed),
        stage_memory_limit=_floats("stage_memory_limit", stage_memory_limit),
    )
    sol = _solve(pr, solver, time_limit)
    out = _as_json(sol, stages)
    if as_json:
        print(json.dumps(out))
        if not sol.has_cut:
            raise typer.Exit(1)
        return
    if not sol.has_cut:
        fail(f"{out['status']}: {out['reason']}", code=1)
    console.print(f"sizes {out['sizes']}, bottleneck {out['bottleneck']:g}, {out['status']} ({solver})")
    for k, (a, b) in enumerate(stage_bounds(sol.sizes)):
        console.print(f"  stage {k}: units {a}-{b}")

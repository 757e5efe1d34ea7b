"""``ppplan run``: execute a plan's cut with torch.distributed, check it, measure it, store it.

:mod:`ppplan.api.cli` adds :data:`commands` to the root app.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape

from ppplan.api.cli.common import console, err_console, fail, positive_finite, user_errors
from ppplan.executor.arrivals import DEFAULT_REQUESTS, parse_load_workload, resolve_load
from ppplan.executor.calibration import check_measured_device
from ppplan.executor.launch import LaunchOptions
from ppplan.executor.recut import parse_partition, recut, speed_cut
from ppplan.executor.report import print_report
from ppplan.executor.run import run_plan
from ppplan.executor.spec import MAX_WORKLOAD, ExecutorError, RankFailedError, parse_slow_ranks
from ppplan.partitioner.plan import Plan
from ppplan.profiler.files import read_input_text

__all__ = ["commands", "load_plan_arg", "run"]

commands = typer.Typer()

MAX_TIMEOUT_S = 86_400.0
"""longest wait of a rank on a peer the command allows, seconds (a day)"""
MAX_NODES = 1_024
"""most hosts one run may span"""


def load_plan_arg(value: str) -> tuple[dict[str, Any], str | None]:
    """The plan named by ``value`` (a Plan JSON file or a stored plan id) and its stored id, if any.

    Raises:
        ExecutorError: neither a readable plan file nor a stored plan.
    """
    path = Path(value)
    if path.is_file():
        text = read_input_text(path, "plan")
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ExecutorError("plan", rule=f"{value!r} is not valid JSON ({str(exc)[:200]})") from None
        _validate_plan(data, value)
        return data, None
    stored = _stored_plan(value)
    if stored is None:
        raise ExecutorError("plan", rule=f"{value!r} is neither a plan JSON file nor a stored plan id")
    _validate_plan(stored, value)
    return stored, value


def _validate_plan(data: Any, where: str) -> None:
    try:
        Plan.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise ExecutorError("plan", rule=f"{where!r} is not a Plan JSON v1 (field {loc}: {first['msg']})") from None


def _stored_plan(plan_id: str) -> dict[str, Any] | None:
    from ppplan.api.run_store import load_stored_plan  # lazy: the CLI starts without SQLAlchemy

    return load_stored_plan(plan_id)


def _calibrate(plan_id: str) -> None:
    from ppplan.api.run_store import calibrate_from_measurements  # lazy: the CLI starts without SQLAlchemy

    _, eff, summary = calibrate_from_measurements(plan_id)
    fe = eff.fit_error
    console.print(
        f"calibrated {summary['gpu']} from {summary['rows']} stored rows ({summary['runs']} run(s), "
        f"{summary['points']} unit points): η compute {eff.compute:.4g}, η memory {eff.memory:.4g}, "
        f"overhead {eff.overhead_s * 1e6:.1f} µs; median fit error {fe.get('all', float('nan')):.1%}",
        highlight=False,
    )
    console.print(
        f"stored profile [bold]{summary['profile_id']}[/] ({summary['profile_label']}); replan with "
        f"`ppplan plan ... --profile {summary['profile_id']}`",
        highlight=False,
    )


@commands.command()
@user_errors
def run(
    plan: Annotated[str, typer.Argument(help="a Plan JSON file or a stored plan id")],
    device: Annotated[str, typer.Option(help="cpu (gloo ranks) or cuda")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16")] = "float32",
    seed: Annotated[int, typer.Option(help="seed of random weights and prompts", min=0, max=2**32 - 1)] = 0,
    checkpoint: Annotated[
        Path | None, typer.Option(help="a .safetensors file or folder (default: seeded random weights)")
    ] = None,
    prompt_tokens: Annotated[
        int | None,
        typer.Option(help="tokens per prompt (default: see docs)", min=1, max=MAX_WORKLOAD["prompt_tokens"]),
    ] = None,
    new_tokens: Annotated[
        int | None, typer.Option(help="tokens generated per sequence", min=1, max=MAX_WORKLOAD["new_tokens"])
    ] = None,
    micro_batches: Annotated[
        int | None,
        typer.Option(help="micro-batches in flight (default: the plan's)", min=1, max=MAX_WORKLOAD["micro_batches"]),
    ] = None,
    micro_batch_size: Annotated[
        int | None, typer.Option(help="sequences per micro-batch", min=1, max=MAX_WORKLOAD["micro_batch_size"])
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            help=f"seconds a rank waits on a peer before failing (at most {MAX_TIMEOUT_S:g})",
            callback=positive_finite("timeout", MAX_TIMEOUT_S),
        ),
    ] = 60.0,
    nnodes: Annotated[int, typer.Option(help="hosts taking part (run once per host)", min=1, max=MAX_NODES)] = 1,
    node_rank: Annotated[
        int, typer.Option(help="this host's index (0 holds rank 0 and the results)", min=0, max=MAX_NODES - 1)
    ] = 0,
    rdzv_endpoint: Annotated[str | None, typer.Option(help="node 0's HOST:PORT (needed with --nnodes > 1)")] = None,
    run_id: Annotated[str | None, typer.Option(help="a name shared by the hosts of one run")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="keep rank logs, raw and reference outputs here")] = None,
    partition: Annotated[
        str | None,
        typer.Option(
            help="run another cut: decoder layers per stage, e.g. 1,3 (not stored as a measurement of the plan)"
        ),
    ] = None,
    check: Annotated[bool, typer.Option(help="compare with the unsplit model")] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report JSON here ('-' = stdout)")] = None,
    store: Annotated[bool, typer.Option(help="store the measurements (stored plans only)")] = True,
    calibrate: Annotated[
        bool,
        typer.Option(
            help="after storing, fit the GPU kind's efficiency from all of "
            "the plan's measurements and store the calibrated profile"
        ),
    ] = False,
    workload: Annotated[
        str | None,
        typer.Option(
            help="serve a request stream instead of the fixed batch: poisson:RATE (requests/s) or "
            f"poisson:RATE:N (N requests, default {DEFAULT_REQUESTS}); reports measured vs predicted TTFT/TPOT"
        ),
    ] = None,
    token_budget: Annotated[
        int | None,
        typer.Option(help="with --workload: tokens per engine step (default: the plan's)", min=1, max=1_048_576),
    ] = None,
    max_seqs: Annotated[
        int | None,
        typer.Option(help="with --workload: most sequences admitted at once (default: the plan's)", min=1, max=65_536),
    ] = None,
    slow_rank: Annotated[
        list[str] | None,
        typer.Option(help="RANK:FACTOR, stretch that rank's compute FACTOR times (a slower GPU); repeatable"),
    ] = None,
    cut_for_speed: Annotated[
        bool,
        typer.Option(
            help="with --slow-rank: re-cut the plan for those stage speeds (the planner's DP with stage speeds) "
            "before running (not stored as a measurement of the plan)"
        ),
    ] = False,
) -> None:
    """Run PLAN's stage cut with one process per rank, check it against the unsplit model, measure it."""
    if device not in ("cpu", "cuda"):
        fail(f"device: {device!r} must be 'cpu' or 'cuda'")
    if node_rank >= nnodes:
        fail(f"node_rank: {node_rank} must be below --nnodes {nnodes} (hosts are numbered from 0)")
    stream = parse_load_workload(workload) if workload is not None else None
    _check_load_options(stream is not None, token_budget, max_seqs, calibrate)
    slow = parse_slow_ranks(slow_rank or [])
    data, plan_id = load_plan_arg(plan)
    data, recut_to = _recut(data, partition, cut_for_speed, slow)
    if recut_to is not None and plan_id is not None and store:
        err_console.print(f"note: the run re-cuts plan {plan_id} to {recut_to}; its measurements are not stored")
        store = False
    _announce(plan, data, device, dtype, nnodes)
    opts = LaunchOptions(nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint, run_id=run_id)
    load = None
    if stream is not None:
        load, load_notes = resolve_load(
            data,
            device,
            *stream,
            prompt_tokens=prompt_tokens,
            output_tokens=new_tokens,
            token_budget=token_budget,
            max_seqs=max_seqs,
            seed=seed,
        )
        for n in load_notes:
            err_console.print(f"note: {n}", markup=False, highlight=False)
    try:
        report = run_plan(
            data,
            device=device,
            dtype=dtype,
            seed=seed,
            checkpoint=str(checkpoint) if checkpoint else None,
            prompt_tokens=prompt_tokens,
            new_tokens=new_tokens,
            micro_batches=micro_batches,
            micro_batch_size=micro_batch_size,
            timeout_s=timeout,
            launch_opts=opts,
            run_dir=run_dir,
            check=check,
            plan_id=plan_id,
            load=load,
            slow_ranks=slow,
        )
    except RankFailedError as exc:
        fail(escape(f"run failed, nothing stored: {exc}"), code=1)
        return
    if report is None:
        err_console.print(f"node {node_rank}: its ranks finished; node 0 holds the results")
        return
    _show_report(report, json_out)
    passed = report["check"] is None or report["check"]["passed"]
    if not passed:
        fail("correctness check failed: the pipelined run differs from the unsplit model (nothing stored)", code=1)
    _store_and_calibrate(report, plan_id if store else None, calibrate=calibrate)


def _check_load_options(load: bool, token_budget: int | None, max_seqs: int | None, calibrate: bool) -> None:
    if not load and (token_budget is not None or max_seqs is not None):
        fail("token_budget/max_seqs: apply to a load run; add --workload poisson:RATE")
    if load and calibrate:
        fail("calibrate: a load run stores TTFT/TPOT rows; calibrate from a plain run (without --workload)")


def _recut(
    data: dict[str, Any], partition: str | None, cut_for_speed: bool, slow: dict[int, float]
) -> tuple[dict[str, Any], list[int] | None]:
    """The plan re-cut by ``--partition`` or ``--cut-for-speed`` (and the sizes), else as it is."""
    if partition is not None and cut_for_speed:
        fail("cut_for_speed: give either --partition or --cut-for-speed, not both")
    if cut_for_speed and not slow:
        fail("cut_for_speed: needs the stage speeds; add --slow-rank RANK:FACTOR")
    if partition is None and not cut_for_speed:
        return data, None
    sizes = parse_partition(partition) if partition is not None else _speed_sizes(data, slow)
    return recut(data, sizes), sizes


def _speed_sizes(data: dict[str, Any], slow: dict[int, float]) -> list[int]:
    """The planner's cut for the stage speeds that ``slow`` (rank → factor) gives, announced."""
    deg = data["degrees"]
    inner = int(deg["tp"]) * int(deg.get("ep", 1) or 1)
    speeds = [max([slow.get(s * inner + j, 1.0) for j in range(inner)]) for s in range(int(deg["pp"]))]
    sizes = speed_cut(data, speeds)
    err_console.print(
        f"note: stage speeds {speeds}: the planner's cut moves the partition {data['partition']} → {sizes}",
        markup=False,
        highlight=False,
    )
    return sizes


def _announce(plan: str, data: dict[str, Any], device: str, dtype: str, nnodes: int) -> None:
    """One line on stderr before torch loads and the ranks start (that takes seconds): what runs where."""
    deg = data["degrees"]
    ep = int(deg.get("ep", 1) or 1)
    ranks = int(deg["tp"]) * int(deg["pp"]) * ep
    hosts = f" over {nnodes} hosts" if nnodes > 1 else ""
    err_console.print(
        f"ppplan run: plan {plan} ({data['model']['name']}, TP {deg['tp']} × PP {deg['pp']}"
        + (f" × EP {ep}" if ep > 1 else "")
        + ", partition "
        f"{data['partition']}): starting {ranks} rank(s) on {device} ({dtype}){hosts}; loading torch …",
        markup=False,
        highlight=False,
    )


def _show_report(report: dict[str, Any], json_out: Path | None) -> None:
    """The report as JSON in ``json_out`` ('-' = stdout, then nothing else) and as tables on stdout."""
    if json_out is not None:
        text = json.dumps(report, indent=1)
        if str(json_out) == "-":
            print(text)
            return
        tmp = json_out.with_name(f".{json_out.name}.tmp")
        tmp.write_text(text + "\n")
        tmp.replace(json_out)
    if report.get("kind") == "load":
        from ppplan.executor.load_report import print_load_report  # lazy: imports numpy

        print_load_report(report, console)
    else:
        print_report(report, console)


def _store_and_calibrate(report: dict[str, Any], plan_id: str | None, *, calibrate: bool) -> None:
    """Store the run's measurements under ``plan_id`` (None: not stored), then calibrate if asked."""
    if plan_id is None:
        if calibrate:
            fail("calibrate: needs a stored plan id (and --store) so the fit reads stored measurements")
        return
    from ppplan.api.run_store import store_measurements  # lazy: the CLI starts without SQLAlchemy

    if calibrate:  # a fit is stored for the plan's GPU kind: it must come from that kind of device
        check_measured_device(str(report.get("plan_gpu", "")), report.get("device"), report.get("device_name"))
    n, rid = store_measurements(plan_id, report)
    err_console.print(f"stored {n} measurement rows of plan {plan_id} (run {rid})", highlight=False)
    if calibrate:
        _calibrate(plan_id)

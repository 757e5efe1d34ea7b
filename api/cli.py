"""The ``ppplan`` command line (typer + rich). Errors print one line and exit with status 2.

Commands of other concerns register themselves here: ``api.cli_profile`` (calibrate),
``api.cli_store`` (plans, serve, db) and ``executor.cli`` (run) add their commands to :data:`app`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from api.errors import USER_ERRORS, describe_error

__all__ = ["app", "main", "user_errors"]

app = typer.Typer(
    name="ppplan",
    help="Stage-partition optimizer for pipeline-parallel LLM inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# tables stay readable when piped (rich would fall back to 80 columns)
console = Console() if sys.stdout.isatty() else Console(width=160)
err_console = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=160)
F = TypeVar("F", bound=Callable[..., Any])
GIB = 1024**3


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` on stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def user_errors(fn: F) -> F:
    """Turn the known user errors into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            fail(describe_error(exc))
        except OSError as exc:
            fail(f"{exc.filename or 'file'}: {exc.strerror}")
        return None

    return wrapper  # type: ignore[return-value]


def _write_json(path: Path, text: str, field: str = "out") -> None:
    """Write ``text`` to ``path`` atomically (no partial file on failure); '-' is stdout.

    Raises:
        ValueError: the file cannot be written, naming the option (``field``) and the path.
    """
    if str(path) == "-":
        sys.stdout.write(text + "\n")
        return
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text + "\n")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"{field}: cannot write {str(path)!r} ({exc.strerror})") from None


@app.command()
@user_errors
def models(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """List the bundled model presets."""
    from profiler.analytic import model_spec
    from profiler.configs import list_presets

    rows = []
    for p in list_presets():
        s = model_spec(p.name)
        rows.append({"name": p.name, "model_type": s.model_type, "layers": s.num_layers,
                     "params": s.total_params, "active_params": s.active_params,
                     "published_params": p.published_params, "hf_repo": p.hf_repo,
                     "attention": sorted({u.attention for u in s.decoder_units})})
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    t = Table(title="bundled presets (configs only, no weights)")
    for c in ("name", "type", "layers", "params", "active", "published", "attention", "repo"):
        t.add_column(c, justify="right" if c in ("layers", "params", "active", "published") else "left")
    for r in rows:
        pub = f"{r['published_params'] / 1e9:.1f}B" if r["published_params"] else "-"
        t.add_row(r["name"], r["model_type"], str(r["layers"]), f"{r['params'] / 1e9:.2f}B",
                  f"{r['active_params'] / 1e9:.2f}B", pub, ",".join(r["attention"]), r["hf_repo"] or "-")
    console.print(t)


@app.command()
@user_errors
def gpus(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """List the GPU catalog (vendor datasheet figures)."""
    from profiler.gpus import list_gpus

    cat = list_gpus()
    if as_json:
        print(json.dumps([g.model_dump() for g in cat], indent=1))
        return
    t = Table(title="GPU catalog (dense peaks; link bandwidth per direction)")
    for c in ("name", "HBM GiB", "HBM TB/s", "bf16 TFLOP/s", "fp8 TFLOP/s", "intra GB/s", "inter GB/s", "aliases"):
        t.add_column(c, justify="left" if c in ("name", "aliases") else "right")
    for g in cat:
        fp8 = g.flops.get("fp8")
        t.add_row(g.name, f"{g.hbm_gib:.0f}", f"{g.hbm_bw / 1e12:.2f}", f"{g.flops['bf16'] / 1e12:.0f}",
                  f"{fp8 / 1e12:.0f}" if fp8 else "-", f"{g.nvlink_bw / 1e9:.0f}", f"{g.network_bw / 1e9:.1f}",
                  ", ".join(g.aliases))
    console.print(t)


@app.command()
@user_errors
def profile(
    model: Annotated[str, typer.Argument(help="preset name or path to a config.json")],
    analytic: Annotated[bool, typer.Option("--analytic", help="analytic profile (no measurement)")] = False,
    device: Annotated[str | None, typer.Option(help="measure on this device: cpu or cuda")] = None,
    weight_dtype: Annotated[str, typer.Option(help="bf16, fp16, fp8, int8 or int4")] = "bf16",
    kv_dtype: Annotated[str, typer.Option(help="bf16, fp16 or fp8")] = "bf16",
    out: Annotated[Path | None, typer.Option(help="write the profile JSON here (default: stdout)")] = None,
    budget_seconds: Annotated[float | None, typer.Option(help="bound a measured run (coarser grid)")] = None,
    gpu: Annotated[str | None, typer.Option(help="catalog GPU kind the measurement stands for")] = None,
    grid: Annotated[str | None, typer.Option(help="measured grid, e.g. 'prefill=128,1024;batch=1,64;context=512'")]
    = None,
    cpu_threads: Annotated[int | None, typer.Option(help="torch threads when measuring on CPU (1 = steadiest)")]
    = None,
) -> None:
    """Profile a model per planning unit: analytic (bytes, FLOPs) or measured with torch."""
    if analytic and device:
        fail("--analytic and --device exclude each other: an analytic profile measures nothing")
    if not analytic and not device:
        fail("choose --analytic, or --device cpu|cuda to measure")
    if analytic and (gpu or grid or budget_seconds is not None or cpu_threads is not None):
        fail("--gpu, --grid, --budget-seconds and --cpu-threads apply to a measured profile (--device), "
             "not to --analytic")
    if cpu_threads is not None and not 1 <= cpu_threads <= max(1, 4 * (os.cpu_count() or 1)):
        fail(f"cpu_threads: {cpu_threads} is outside 1..{max(1, 4 * (os.cpu_count() or 1))} "
             f"(this host has {os.cpu_count()} CPUs)")
    if analytic:
        from profiler.analytic import analytic_profile, model_spec

        prof = analytic_profile(model_spec(model), weight_dtype, kv_dtype)
    else:
        from profiler.measure import run_profile_cli  # imports torch

        prof = run_profile_cli(model=model, device=device or "cpu", weight_dtype=weight_dtype, kv_dtype=kv_dtype,
                               budget_seconds=budget_seconds, gpu=gpu, console=err_console, grid=grid,
                               cpu_threads=cpu_threads)
    _write_json(out or Path("-"), prof.to_json())
    if out:
        err_console.print(f"wrote {out} ({prof.label}, {len(prof.units)} units)")


def _load_profile_arg(value: str | None) -> Any:
    if value is None:
        return None
    from profiler.profile import load_profile

    if Path(value).exists():
        return load_profile(value)
    from profiler.bundled import bundled_profile, bundled_profiles

    if value in bundled_profiles() or value.removesuffix(".json") in bundled_profiles():
        return bundled_profile(value)
    try:
        from api.store_lookup import find_profile  # provided by the storage layer
    except ImportError:
        from profiler.profile import ProfileError

        raise ProfileError(f"profile: {value!r} is not a file") from None
    return find_profile(value)


@app.command()
@user_errors
def plan(
    model: Annotated[str, typer.Argument(help="preset name or path to a config.json")],
    gpus: Annotated[str, typer.Option(help="COUNTxKIND, e.g. 8xH100")] = "8xH100",
    nodes: Annotated[int | None, typer.Option(help="nodes the GPUs are spread over")] = None,
    weight_dtype: Annotated[str, typer.Option(help="bf16, fp16, fp8, int8, int4")] = "bf16",
    kv_dtype: Annotated[str, typer.Option(help="bf16, fp16, fp8")] = "bf16",
    prompt_tokens: Annotated[int, typer.Option(help="prompt length per request")] = 2048,
    output_tokens: Annotated[int, typer.Option(help="generated tokens per request")] = 512,
    concurrency: Annotated[int, typer.Option(help="sequences in flight over all replicas")] = 64,
    context: Annotated[int | None, typer.Option(help="KV tokens per sequence (default prompt+output)")] = None,
    objective: Annotated[str, typer.Option(help="throughput, latency or min-gpus")] = "throughput",
    max_tpot_ms: Annotated[float | None, typer.Option(help="SLO: max time per output token, ms")] = None,
    max_ttft_ms: Annotated[float | None, typer.Option(help="SLO: max time to first token, ms")] = None,
    tp: Annotated[int | None, typer.Option(help="pin the tensor-parallel degree")] = None,
    pp: Annotated[int | None, typer.Option(help="pin the pipeline-parallel degree")] = None,
    gpu_memory_utilization: Annotated[float, typer.Option(help="share of HBM the engine uses")] = 0.9,
    runtime_reserve_gib: Annotated[float, typer.Option(help="per-GPU runtime reserve, GiB")] = 2.0,
    profile: Annotated[str | None, typer.Option(help="plan with this profile: a file, a stored id, or a shipped "
                                                      "measured one, e.g. llama-3.1-70b.bf16.H100-SXM-80GB")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write Plan JSON v1 here ('-' = stdout)")] = None,
    export: Annotated[str | None, typer.Option(help="print engine settings: vllm, sglang, trtllm, torch")] = None,
    save: Annotated[bool, typer.Option(help="store the plan in the local database")] = True,
    solver: Annotated[str, typer.Option(help="cut solver: dp (exact) or cpsat (OR-Tools, gap reported)")] = "dp",
) -> None:
    """Plan TP/PP degrees, replicas and the exact stage cut for MODEL on GPUS."""
    from partitioner.exports import EXPORT_FORMATS, render_export
    from partitioner.request import PlanRequest
    from partitioner.search import plan_model

    if export is not None and (export not in EXPORT_FORMATS or export == "json"):
        fail(f"export: {export!r} is not one of vllm, sglang, trtllm, torch")
    req = PlanRequest(
        model=model, gpus=gpus, nodes=nodes, weight_dtype=weight_dtype, kv_dtype=kv_dtype,
        prompt_tokens=prompt_tokens, output_tokens=output_tokens, concurrency=concurrency, context=context,
        objective=objective, max_tpot_ms=max_tpot_ms, max_ttft_ms=max_ttft_ms, tp=tp, pp=pp,
        gpu_memory_utilization=gpu_memory_utilization, runtime_reserve_gib=runtime_reserve_gib, profile=profile,
        solver=solver,
    )
    result = plan_model(req, _load_profile_arg(profile))
    data = result.model_dump(mode="json")
    plan_id = _save_plan(req, result) if save else None
    if json_out is not None:
        _write_json(json_out, json.dumps(data, indent=1), field="json")
        if str(json_out) == "-":
            return
    if export:
        print(render_export(data, export))
        return
    print_plan(data, plan_id)


def _save_plan(req: Any, result: Any) -> str | None:
    try:
        from api.store_lookup import save_plan_from_cli
    except ImportError:
        return None
    return save_plan_from_cli(req, result)


def print_plan(d: dict[str, Any], plan_id: str | None = None) -> None:
    """A readable summary of a Plan JSON dict."""
    deg, m, c = d["degrees"], d["metrics"], d["cluster"]
    head = (f"[bold]{d['model']['name']}[/] ({d['weight_dtype']} weights, {d['kv_dtype']} KV) on "
            f"{c['count']}× {c['gpu']} ({c['nodes']} node(s)) — objective {d['objective']}")
    console.print(head)
    console.print(f"TP {deg['tp']} × PP {deg['pp']} × {deg['replicas']} replica(s), {deg['micro_batches']} "
                  f"micro-batch(es) of {deg['micro_batch_size']}; partition {d['partition']}")
    console.print(f"throughput {m['throughput_tokens_per_s']:.0f} tok/s ({m['throughput_per_gpu']:.0f}/GPU), "
                  f"TPOT {m['tpot_ms']:.2f} ms, TTFT {m['ttft_ms']:.1f} ms, bubble "
                  f"{d['schedule']['bubble_fraction']:.0%}, KV capacity {m['kv_capacity_tokens']:,} tokens "
                  f"(≈{m['max_concurrency']:.0f} sequences of {d['workload']['context']}) per replica"
                  + ("" if m["slo_met"] else " [red](SLO not met)[/]"))
    t = Table(title="stages (per GPU)")
    for col in ("stage", "layers", "n", "embed/head", "decode ms", "prefill ms", "busy ms", "weights GiB",
                "KV GiB", "work GiB", "total/limit GiB", "free GiB", "KV tokens"):
        t.add_column(col, justify="right")
    for s in d["stages"]:
        eh = ("E" if s["has_embedding"] else "") + ("H" if s["has_lm_head"] else "")
        mem = s["memory"]
        t.add_row(str(s["index"]), f"{s['decoder_layers'][0]}–{s['decoder_layers'][1]}",
                  str(s["num_decoder_layers"]), eh or "-", f"{s['times']['decode_ms']:.3f}",
                  f"{s['times']['prefill_ms']:.2f}", f"{s['times']['busy_ms']:.3f}", f"{mem['weights_gib']:.2f}",
                  f"{mem['kv_cache_gib']:.2f}", f"{mem['workspace_gib']:.2f}",
                  f"{mem['total_gib']:.1f}/{mem['limit_gib']:.1f}", f"{mem['free_gib']:.1f}",
                  f"{s['kv_capacity_tokens']:,}")
    console.print(t)
    b = Table(title="engine defaults with the same degrees")
    for col in ("engine", "partition", "fits", "tok/s", "gain", "KV tokens", "KV gain"):
        b.add_column(col, justify="right")
    for x in d["baselines"]:
        fits = "yes" if x["feasible"] else f"no: {x['reason']}"
        thr = f"{x['throughput_tokens_per_s']:.0f}" if x["throughput_tokens_per_s"] else "-"
        gain = f"{x['throughput_gain']:+.1%}" if x["throughput_gain"] is not None else "-"
        kvg = f"{x['kv_capacity_gain']:+.1%}" if x["kv_capacity_gain"] is not None else "-"
        b.add_row(x["engine"], ",".join(map(str, x["partition"])), fits, thr, gain,
                  f"{x['kv_capacity_tokens']:,}" if x["kv_capacity_tokens"] is not None else "-", kvg)
    console.print(b)
    if d["runner_ups"]:
        r = Table(title="runner-ups")
        for col in ("TP", "PP", "replicas", "M", "tok/s", "tok/s/GPU", "TPOT ms", "TTFT ms", "SLO"):
            r.add_column(col, justify="right")
        for x in d["runner_ups"]:
            g = x["degrees"]
            r.add_row(str(g["tp"]), str(g["pp"]), str(g["replicas"]), str(g["micro_batches"]),
                      f"{x['throughput_tokens_per_s']:.0f}", f"{x['throughput_per_gpu']:.0f}", f"{x['tpot_ms']:.2f}",
                      f"{x['ttft_ms']:.1f}", "yes" if x["slo_met"] else "no")
        console.print(r)
    pv = d["provenance"]
    pareto = ", ".join(f"TP{x['degrees']['tp']}×PP{x['degrees']['pp']}×{x['degrees']['replicas']}: "
                       f"{x['throughput_per_gpu']:.0f} tok/s/GPU @ {x['tpot_ms']:.1f} ms" for x in d["pareto"][:6])
    console.print(f"Pareto (throughput/GPU vs TPOT): {pareto}", highlight=False)
    console.print(f"predicted by {m['predicted_by']}; solver {pv['solver']}, optimal={pv['optimal']} "
                  f"(gap {pv.get('gap', 0.0):.2%}), "
                  f"{pv['configs_evaluated']} cuts solved in {pv['solve_time_ms']:.1f} ms", highlight=False)
    for n in d.get("notes", []):
        console.print(f"note: {n}", highlight=False)
    if plan_id:
        console.print(f"plan id: [bold]{plan_id}[/]")


@app.command()
@user_errors
def validate(plan_file: Annotated[Path, typer.Argument(help="a Plan JSON v1 file")]) -> None:
    """Check a plan file's internal consistency (partition, stages, memory, schedule, exports)."""
    from pydantic import ValidationError

    from partitioner.plan import Plan
    from partitioner.validate import validate_plan

    try:
        data = json.loads(plan_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        fail(f"plan_file: {str(plan_file)!r} is not a readable JSON file ({exc})")
        return
    try:
        Plan.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"plan_file: {str(plan_file)!r} is not a Plan JSON v1 (field "
             f"{'.'.join(str(x) for x in first['loc'])}: {first['msg']})")
    problems = validate_plan(data)
    for p in problems:
        console.print(f"problem: {p}", highlight=False)
    if problems:
        raise typer.Exit(1)
    console.print(f"{plan_file}: consistent ({len(data['stages'])} stages, partition {data['partition']})")


def _floats(field: str, text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        fail(f"{field}: {text!r} must be comma-separated numbers, e.g. 1,1,2")
    return None


@app.command()
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
    from partitioner.dp import PartitionProblem, solve_partition

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
        if not isinstance(vals, list) or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                                 for v in vals):
            fail(f"costs.{key}: must be a list of numbers")
    pr = PartitionProblem(
        time=tuple(float(x) for x in data["time"]), stages=stages,
        memory=tuple(float(x) for x in data["memory"]) if data.get("memory") is not None else None,
        memory_limit=memory_limit, stage_speed=_floats("stage_speed", stage_speed),
        stage_memory_limit=_floats("stage_memory_limit", stage_memory_limit),
    )
    out: dict[str, Any]
    if solver == "cpsat":
        from partitioner.cpsat import solve_partition_cpsat

        cp = solve_partition_cpsat(pr, time_limit_s=time_limit)
        ok = cp.status in ("optimal", "feasible")
        out = {"sizes": list(cp.sizes) if ok else None, "bottleneck": cp.bottleneck if ok else None,
               "optimal": cp.status == "optimal", "status": cp.status, "bound": cp.bound, "gap": cp.gap,
               "solver": "cpsat", "wall_s": cp.wall_s}
        if not ok:
            out["reason"] = cp.reason
    else:
        res = solve_partition(pr)
        ok = res.optimal
        out = {"sizes": list(res.sizes) if ok else None, "bottleneck": res.bottleneck if ok else None,
               "optimal": ok, "status": res.status, "solver": "dp", "stage_times": list(res.stage_times),
               "stage_memory": list(res.stage_memory)}
        if not ok:
            # your numbers carry your units: say them as given, not as GiB
            if res.worst_stage is not None:
                a, b = int(res.detail["first_unit"]), int(res.detail["last_unit"])
                out["reason"] = (f"stage {res.worst_stage} (units {a}-{b}) needs {res.needed_bytes:g}, limit "
                                 f"{res.limit_bytes:g}, in the cut into {stages} stages that overshoots least")
            elif "unit" in res.detail:
                out["reason"] = (f"unit {int(res.detail['unit'])} alone needs {res.needed_bytes:g}, "
                                 f"limit {res.limit_bytes:g}")
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
    from partitioner.dp import stage_bounds

    for k, (a, b) in enumerate(stage_bounds(out["sizes"])):
        console.print(f"  stage {k}: units {a}-{b}")


def _register_optional() -> None:
    for mod in ("api.cli_profile", "api.cli_store", "executor.cli"):
        try:
            __import__(mod)
        except ImportError as exc:
            if exc.name != mod:
                raise


def main() -> None:
    """Console-script entry point: usage errors print one line (exit 2), like every other user error."""
    try:  # typer >= 0.20 vendors click; earlier releases use click itself
        from typer._click.exceptions import ClickException, UsageError
    except ImportError:  # pragma: no cover - depends on the installed typer
        from click.exceptions import ClickException, UsageError  # type: ignore[assignment]

    _register_optional()
    try:
        rv = app(standalone_mode=False)
    except UsageError as exc:
        hint = ""
        param = getattr(exc, "param", None)
        if param is not None and getattr(param, "name", None):
            hint = f"{param.name}: "
        message = exc.format_message()
        if message.strip():  # no arguments at all: the help was the answer
            err_console.print(f"[bold red]error:[/] {hint}{message}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except ClickException as exc:
        err_console.print(f"[bold red]error:[/] {exc.format_message()}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()

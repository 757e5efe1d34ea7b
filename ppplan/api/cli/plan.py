"""``ppplan plan`` and ``ppplan validate``: plan a model, check a plan file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from ppplan.api.cli.common import console, fail, load_profile_arg, user_errors, write_json
from ppplan.partitioner.exports import ENGINE_FORMATS, render_export
from ppplan.partitioner.plan import Plan
from ppplan.partitioner.request import PlanRequest
from ppplan.partitioner.validate import REDERIVED, validate_plan
from ppplan.profiler.configs import preset_name
from ppplan.profiler.files import read_input_text
from ppplan.profiler.resolve import plan_request

__all__ = ["commands", "print_plan"]

commands = typer.Typer()


@commands.command()
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
    profile: Annotated[
        str | None,
        typer.Option(
            help="plan with this profile: a file, a stored id, or a shipped "
            "measured one, e.g. llama-3.1-70b.bf16.H100-SXM-80GB"
        ),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write Plan JSON v1 here ('-' = stdout)")] = None,
    export: Annotated[str | None, typer.Option(help=f"print engine settings: {', '.join(ENGINE_FORMATS)}")] = None,
    save: Annotated[bool, typer.Option(help="store the plan in the local database")] = True,
    solver: Annotated[str, typer.Option(help="cut solver: dp (exact) or cpsat (OR-Tools, gap reported)")] = "dp",
) -> None:
    """Plan TP/PP degrees, replicas and the exact stage cut for MODEL on GPUS."""
    if export is not None and export not in ENGINE_FORMATS:
        fail(f"export: {export!r} is not one of {', '.join(ENGINE_FORMATS)}")
    req = PlanRequest(
        model=preset_name(model) or model,  # a hub id and the preset's name are one request
        gpus=gpus,
        nodes=nodes,
        weight_dtype=weight_dtype,
        kv_dtype=kv_dtype,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        concurrency=concurrency,
        context=context,
        objective=objective,
        max_tpot_ms=max_tpot_ms,
        max_ttft_ms=max_ttft_ms,
        tp=tp,
        pp=pp,
        gpu_memory_utilization=gpu_memory_utilization,
        runtime_reserve_gib=runtime_reserve_gib,
        profile=profile,
        solver=solver,
    )
    prof = load_profile_arg(profile)
    result = plan_request(req, prof)
    data = result.model_dump(mode="json")
    plan_id = None
    if save:
        from ppplan.api.store_lookup import save_plan_from_cli  # lazy: --no-save must not import SQLAlchemy

        plan_id = save_plan_from_cli(req, result, prof)
    if json_out is not None:
        write_json(json_out, json.dumps(data, indent=1), field="json")
        if str(json_out) == "-":
            return
    if export:
        print(render_export(data, export))
        return
    print_plan(data, plan_id)


def print_plan(d: dict[str, Any], plan_id: str | None = None) -> None:
    """A readable summary of a Plan JSON dict."""
    deg, m, c = d["degrees"], d["metrics"], d["cluster"]
    head = (
        f"[bold]{d['model']['name']}[/] ({d['weight_dtype']} weights, {d['kv_dtype']} KV) on "
        f"{c['count']}× {c['gpu']} ({c['nodes']} node(s)) — objective {d['objective']}"
    )
    console.print(head)
    console.print(
        f"TP {deg['tp']} × PP {deg['pp']} × {deg['replicas']} replica(s), {deg['micro_batches']} "
        f"micro-batch(es) of {deg['micro_batch_size']}; partition {d['partition']}"
    )
    console.print(
        f"throughput {m['throughput_tokens_per_s']:.0f} tok/s ({m['throughput_per_gpu']:.0f}/GPU), "
        f"TPOT {m['tpot_ms']:.2f} ms, TTFT {m['ttft_ms']:.1f} ms, bubble "
        f"{d['schedule']['bubble_fraction']:.0%}, KV capacity {m['kv_capacity_tokens']:,} tokens "
        f"(≈{m['max_concurrency']:.0f} sequences of {d['workload']['context']}) per replica"
        + ("" if m["slo_met"] else " [red](SLO not met)[/]")
    )
    t = Table(title="stages (per GPU)")
    for col in (
        "stage",
        "layers",
        "n",
        "embed/head",
        "decode ms",
        "prefill ms",
        "busy ms",
        "weights GiB",
        "KV GiB",
        "work GiB",
        "total/limit GiB",
        "free GiB",
        "KV tokens",
    ):
        t.add_column(col, justify="right")
    for s in d["stages"]:
        eh = ("E" if s["has_embedding"] else "") + ("H" if s["has_lm_head"] else "")
        mem = s["memory"]
        t.add_row(
            str(s["index"]),
            f"{s['decoder_layers'][0]}–{s['decoder_layers'][1]}",
            str(s["num_decoder_layers"]),
            eh or "-",
            f"{s['times']['decode_ms']:.3f}",
            f"{s['times']['prefill_ms']:.2f}",
            f"{s['times']['busy_ms']:.3f}",
            f"{mem['weights_gib']:.2f}",
            f"{mem['kv_cache_gib']:.2f}",
            f"{mem['workspace_gib']:.2f}",
            f"{mem['total_gib']:.1f}/{mem['limit_gib']:.1f}",
            f"{mem['free_gib']:.1f}",
            f"{s['kv_capacity_tokens']:,}",
        )
    console.print(t)
    b = Table(title="engine defaults with the same degrees")
    for col in ("engine", "partition", "fits", "tok/s", "gain", "KV tokens", "KV gain"):
        b.add_column(col, justify="right")
    for x in d["baselines"]:
        fits = "yes" if x["feasible"] else f"no: {x['reason']}"
        thr = f"{x['throughput_tokens_per_s']:.0f}" if x["throughput_tokens_per_s"] else "-"
        gain = f"{x['throughput_gain']:+.1%}" if x["throughput_gain"] is not None else "-"
        kvg = f"{x['kv_capacity_gain']:+.1%}" if x["kv_capacity_gain"] is not None else "-"
        b.add_row(
            x["engine"],
            ",".join(map(str, x["partition"])),
            fits,
            thr,
            gain,
            f"{x['kv_capacity_tokens']:,}" if x["kv_capacity_tokens"] is not None else "-",
            kvg,
        )
    console.print(b)
    if d["runner_ups"]:
        r = Table(title="runner-ups")
        for col in ("TP", "PP", "replicas", "M", "tok/s", "tok/s/GPU", "TPOT ms", "TTFT ms", "SLO"):
            r.add_column(col, justify="right")
        for x in d["runner_ups"]:
            g = x["degrees"]
            r.add_row(
                str(g["tp"]),
                str(g["pp"]),
                str(g["replicas"]),
                str(g["micro_batches"]),
                f"{x['throughput_tokens_per_s']:.0f}",
                f"{x['throughput_per_gpu']:.0f}",
                f"{x['tpot_ms']:.2f}",
                f"{x['ttft_ms']:.1f}",
                "yes" if x["slo_met"] else "no",
            )
        console.print(r)
    pv = d["provenance"]
    pareto = ", ".join(
        f"TP{x['degrees']['tp']}×PP{x['degrees']['pp']}×{x['degrees']['replicas']}: "
        f"{x['throughput_per_gpu']:.0f} tok/s/GPU @ {x['tpot_ms']:.1f} ms"
        for x in d["pareto"][:6]
    )
    console.print(f"Pareto (throughput/GPU vs TPOT): {pareto}", highlight=False)
    console.print(
        f"predicted by {m['predicted_by']}; solver {pv['solver']}, optimal={pv['optimal']} "
        f"(gap {pv.get('gap', 0.0):.2%}), "
        f"{pv['configs_evaluated']} cuts solved in {pv['solve_time_ms']:.1f} ms",
        highlight=False,
    )
    for n in d.get("notes", []):
        console.print(f"note: {n}", highlight=False)
    if plan_id:
        console.print(f"plan id: [bold]{plan_id}[/]")


@commands.command()
@user_errors
def validate(plan_file: Annotated[Path, typer.Argument(help="a Plan JSON v1 file")]) -> None:
    """Re-derive and check a (hand-edited) plan file: partition, stage ranges, memory, schedule, exports.

    Exit status 0 when consistent, 1 with one line per problem, 2 when the file is not a plan.
    """
    text = read_input_text(plan_file, "plan_file")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        fail(escape(f"plan_file: {str(plan_file)!r} is not valid JSON ({str(exc)[:200]})"))
        return
    try:
        Plan.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"]) or "(top level)"
        fail(escape(f"plan_file: {str(plan_file)!r} is not a Plan JSON v1 (field {loc}: {first['msg']})"))
    problems = validate_plan(data)
    for p in problems:
        console.print(f"problem: {p}", markup=False, highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(1)
    console.print(
        f"{plan_file}: consistent ({len(data['stages'])} stages, partition {data['partition']}); re-derived: "
        f"{REDERIVED}; taken as given: each stage's decode, prefill and memory parts (sums over its layers; "
        "other cuts need the profile)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )

"""``ppplan plan`` and ``ppplan validate``: plan a model, check a plan file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape

from ppplan.api.cli.common import console, fail, load_profile_arg, user_errors, write_json
from ppplan.api.cli.plan_view import print_plan
from ppplan.core.errors import PpplanError
from ppplan.partitioner.cluster_file import parse_cluster_file
from ppplan.partitioner.exports import ENGINE_FORMATS, render_export
from ppplan.partitioner.plan import Plan
from ppplan.partitioner.request import PlanRequest
from ppplan.partitioner.validate import REDERIVED, validate_plan
from ppplan.partitioner.workload import parse_token_dist, parse_workload
from ppplan.profiler.configs import preset_name
from ppplan.profiler.files import read_input_text
from ppplan.profiler.resolve import plan_request

__all__ = ["commands", "print_plan"]

commands = typer.Typer()


DEFAULT_PROMPT_TOKENS = 2048
DEFAULT_OUTPUT_TOKENS = 512
SLO_MISSED_EXIT = 3
"""Exit status of ``ppplan plan`` when the plan it prints misses an SLO (a pinned concurrency)."""


def _lengths(text: str | None, default: int, field: str) -> tuple[int, float | None]:
    """``--prompt-tokens``/``--output-tokens``: ``N`` or ``MEAN±SD`` as (mean tokens, sd or None)."""
    if text is None:
        return default, None
    dist = parse_token_dist(text, field)
    if dist.mean != int(dist.mean):
        raise PpplanError(field, value=text, rule="the mean must be a whole number of tokens")
    return int(dist.mean), dist.sd or None


def _workload_fields(path: Path) -> dict[str, Any]:
    """The request fields of a ``--workload FILE``: means, standard deviations, histograms."""
    wl = parse_workload(read_input_text(path, "workload"), "workload")
    return {
        "prompt_tokens": max(1, round(wl.prompt.mean)),
        "output_tokens": max(1, round(wl.output.mean)),
        "prompt_tokens_sd": None if wl.prompt.histogram else wl.prompt.sd or None,
        "output_tokens_sd": None if wl.output.histogram else wl.output.sd or None,
        "prompt_tokens_histogram": wl.prompt.histogram,
        "output_tokens_histogram": wl.output.histogram,
    }


@commands.command()
@user_errors
def plan(
    model: Annotated[str, typer.Argument(help="preset name or path to a config.json")],
    gpus: Annotated[str, typer.Option(help="COUNTxKIND, e.g. 8xH100")] = "8xH100",
    nodes: Annotated[int | None, typer.Option(help="nodes the GPUs are spread over")] = None,
    cluster: Annotated[
        Path | None,
        typer.Option(help="JSON file listing the nodes (GPU kind, count, interconnect) and network; replaces --gpus"),
    ] = None,
    weight_dtype: Annotated[str, typer.Option(help="bf16, fp16, fp8, int8, int4")] = "bf16",
    kv_dtype: Annotated[str, typer.Option(help="bf16, fp16, fp8")] = "bf16",
    prompt_tokens: Annotated[
        str | None, typer.Option(help=f"prompt length per request: N or MEAN±SD [default: {DEFAULT_PROMPT_TOKENS}]")
    ] = None,
    output_tokens: Annotated[
        str | None, typer.Option(help=f"output length per request: N or MEAN±SD [default: {DEFAULT_OUTPUT_TOKENS}]")
    ] = None,
    workload: Annotated[
        Path | None, typer.Option(help="JSON file of prompt/output length distributions (replaces the lengths)")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="pin the sequences in flight over all replicas (default: searched)")
    ] = None,
    request_rate: Annotated[float | None, typer.Option(help="requests/s to serve (Poisson arrivals)")] = None,
    output_rate: Annotated[float | None, typer.Option(help="output tokens/s to serve")] = None,
    context: Annotated[int | None, typer.Option(help="KV tokens per sequence to reserve (max-model-len)")] = None,
    objective: Annotated[str, typer.Option(help="throughput, latency or min-gpus")] = "throughput",
    max_tpot_ms: Annotated[float | None, typer.Option(help="SLO: max time per output token, ms")] = None,
    max_ttft_ms: Annotated[float | None, typer.Option(help="SLO: max p90 time to first token under load, ms")] = None,
    tp: Annotated[int | None, typer.Option(help="pin the tensor-parallel degree")] = None,
    pp: Annotated[int | None, typer.Option(help="pin the pipeline-parallel degree")] = None,
    ep: Annotated[
        int | None,
        typer.Option(
            help="pin the expert-parallel degree of MoE layers (1: experts split by TP; with EP --tp is attention's)"
        ),
    ] = None,
    expert_imbalance: Annotated[
        float | None, typer.Option(help="busiest EP rank's routed tokens / the mean [default: 1.5, EPLB]")
    ] = None,
    gpu_memory_utilization: Annotated[float, typer.Option(help="share of HBM the engine uses")] = 0.9,
    runtime_reserve_gib: Annotated[float, typer.Option(help="per-GPU runtime reserve, GiB")] = 2.0,
    prefill_chunk_tokens: Annotated[
        int, typer.Option(help="tokens per engine step (vLLM --max-num-batched-tokens)")
    ] = 8192,
    engine: Annotated[str | None, typer.Option(help="vllm, sglang or trtllm: KV blocks, kernel tables")] = None,
    kernel_db: Annotated[
        str | None, typer.Option(help="aiconfigurator: unit times from its measured kernels (ppplan[kerneldb])")
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            help="plan with this profile: a file, a stored id, or a shipped "
            "measured one, e.g. llama-3.1-70b.bf16.H100-SXM-80GB"
        ),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write Plan JSON v1 here ('-' = stdout)")] = None,
    html: Annotated[Path | None, typer.Option(help="write the plan as one self-contained HTML page")] = None,
    export: Annotated[str | None, typer.Option(help=f"print engine settings: {', '.join(ENGINE_FORMATS)}")] = None,
    save: Annotated[bool, typer.Option(help="store the plan in the local database")] = True,
    solver: Annotated[str, typer.Option(help="cut solver: dp (exact) or cpsat (OR-Tools, gap reported)")] = "dp",
    wide: Annotated[bool, typer.Option(help="every column (wider than 100 characters)")] = False,
) -> None:
    """Plan TP/PP degrees, replicas, the batch and the exact stage cut for MODEL on GPUS.

    Exit status: 0 a plan that meets its SLOs; 2 bad input, nothing fits, or nothing meets the SLOs
    (the error says the best value reached and what would help); 3 a plan printed that misses an SLO
    (only with a pinned --concurrency).
    """
    if export is not None and export not in ENGINE_FORMATS:
        fail(f"export: {export!r} is not one of {', '.join(ENGINE_FORMATS)}")
    p_mean, p_sd = _lengths(prompt_tokens, DEFAULT_PROMPT_TOKENS, "prompt_tokens")
    o_mean, o_sd = _lengths(output_tokens, DEFAULT_OUTPUT_TOKENS, "output_tokens")
    lengths: dict[str, Any] = {
        "prompt_tokens": p_mean,
        "output_tokens": o_mean,
        "prompt_tokens_sd": p_sd,
        "output_tokens_sd": o_sd,
    }
    if workload is not None:
        lengths = _workload_fields(workload)
    cluster_data: dict[str, Any] | None = None
    if cluster is not None:
        if nodes is not None:
            raise PpplanError("nodes", nodes, rule="a cluster file lists its nodes; leave --nodes unset with --cluster")
        text = read_input_text(cluster, "cluster")
        gpus = parse_cluster_file(text).text  # strict: bad JSON or keys raise PpplanError naming the key path
        try:
            cluster_data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise PpplanError("cluster", rule=f"{str(cluster)!r} is not valid JSON ({str(exc)[:200]})") from None
    req = PlanRequest(
        model=preset_name(model) or model,  # a hub id and the preset's name are one request
        gpus=gpus,
        nodes=nodes,
        cluster=cluster_data,
        weight_dtype=weight_dtype,
        kv_dtype=kv_dtype,
        **lengths,
        concurrency=concurrency,
        request_rate=request_rate,
        output_rate=output_rate,
        context=context,
        objective=objective,
        max_tpot_ms=max_tpot_ms,
        max_ttft_ms=max_ttft_ms,
        tp=tp,
        pp=pp,
        ep=ep,
        expert_imbalance=expert_imbalance,
        gpu_memory_utilization=gpu_memory_utilization,
        runtime_reserve_gib=runtime_reserve_gib,
        prefill_chunk_tokens=prefill_chunk_tokens,
        engine=engine,
        kernel_db=kernel_db,
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
    if html is not None:
        from ppplan.api.web import render_html  # lazy: the page renderer is only for --html

        write_json(html, render_html(data), field="html")
    missed = not data["metrics"]["slo_met"]
    if json_out is not None:
        write_json(json_out, json.dumps(data, indent=1), field="json")
    if export:
        print(render_export(data, export))
    elif json_out is None or str(json_out) != "-":
        defaults = [
            f"--{name.replace('_', '-')} {default}"
            for name, given, default in (
                ("prompt_tokens", prompt_tokens is not None or workload is not None, DEFAULT_PROMPT_TOKENS),
                ("output_tokens", output_tokens is not None or workload is not None, DEFAULT_OUTPUT_TOKENS),
            )
            if not given
        ]
        print_plan(data, plan_id, wide=wide, defaults=defaults)
    if missed:
        raise typer.Exit(SLO_MISSED_EXIT)


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

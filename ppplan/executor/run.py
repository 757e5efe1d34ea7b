"""Run a plan end to end: validate, launch the ranks, check against the unsplit model, report.

Nothing half-written leaves a run: rank 0 writes ``outputs.pt`` then ``result.json`` by rename,
and :func:`run_plan` returns a report only when every rank finished and ``result.json`` exists.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from ppplan.executor.arrivals import LoadSpec, requests_of
from ppplan.executor.launch import LaunchOptions, launch
from ppplan.executor.report import build_report
from ppplan.executor.spec import (
    MAX_WORKLOAD,
    ExecutorError,
    RankFailedError,
    RunSpec,
    Workload,
    as_device,
    resolve_workload,
)
from ppplan.profiler.configs import ModelConfigError, load_model_config

__all__ = ["check_runnable", "model_name_of", "run_plan"]


def model_name_of(plan: dict[str, Any]) -> str:
    """What :func:`profiler.configs.load_model_config` needs to rebuild the plan's model.

    Raises:
        ExecutorError: the plan's config cannot be found or changed since planning.
    """
    src = str(plan["model_source"])
    name = src.removeprefix("preset:")
    try:
        cfg = load_model_config(name)
    except ModelConfigError as exc:
        raise ExecutorError("model_source", rule=f"{src!r} cannot be loaded here ({exc})") from None
    if cfg.config_hash != plan["model"]["config_hash"]:
        raise ExecutorError(
            "model_source",
            rule=f"{src!r} has config hash {cfg.config_hash[:12]}, the plan was made for "
            f"{plan['model']['config_hash'][:12]}: the config changed since planning",
        )
    return name


def check_runnable(plan: dict[str, Any], device: str, dtype: str = "float32") -> list[str]:
    """Refuse what the executor cannot run (with the reason) and return notes on what it simplifies."""
    deg = plan["degrees"]
    notes = []
    _check_consistent(plan)
    if device == "cpu":
        _check_host_memory(plan, _DTYPE_BYTES.get(dtype, 4))
    if deg["tp"] > 1 and device == "cuda":
        import torch  # lazy: importing the executor (the CLI) must not import torch

        if torch.cuda.device_count() < deg["tp"] * deg["pp"]:
            raise ExecutorError(
                "degrees.tp",
                rule=f"{deg['tp']} on {torch.cuda.device_count()} GPU(s) for {deg['tp'] * deg['pp']} ranks: "
                "tensor parallelism on CUDA needs NCCL, and NCCL needs one GPU per rank; run with --device cpu "
                "to check the cut, or replan with --tp 1",
            )
    if deg["replicas"] > 1:
        notes.append(
            f"the plan has {deg['replicas']} replicas; the executor runs one (replicas are "
            "independent copies of the same cut)"
        )
    if device == "cuda":
        import torch  # lazy: importing the executor (the CLI) must not import torch

        if not torch.cuda.is_available():
            raise ExecutorError("device", rule="'cuda' requested but torch sees no CUDA GPU (use --device cpu)")
    return notes


def _check_consistent(plan: dict[str, Any]) -> None:
    """A plan whose partition, degrees and stages disagree was edited by hand: refuse it."""
    deg, part, stages = plan["degrees"], list(plan["partition"]), plan["stages"]
    layers = int(plan["model"]["num_layers"])
    if len(part) != deg["pp"] or len(stages) != deg["pp"]:
        raise ExecutorError(
            "partition",
            rule=f"{part} has {len(part)} stages, degrees.pp is {deg['pp']} and the plan "
            f"lists {len(stages)} stages; they must agree",
        )
    if sum(part) != layers or any(x < 1 for x in part):
        raise ExecutorError(
            "partition",
            rule=f"{part} must give every stage ≥ 1 of the model's {layers} decoder layers (sum {sum(part)})",
        )
    first = 0
    for s, n in zip(stages, part, strict=True):
        if list(s["decoder_layers"]) != [first, first + n - 1]:
            raise ExecutorError(
                f"stages[{s['index']}].decoder_layers",
                s["decoder_layers"],
                rule=f"disagrees with the partition {part} (expected [{first}, {first + n - 1}])",
            )
        first += n


#: bytes per parameter the CPU check assumes for each executor dtype
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def _check_host_memory(plan: dict[str, Any], dtype_bytes: int = 4) -> None:
    """Refuse a CPU run whose weights cannot fit in this host's memory: the ranks hold the model once
    between them (a TP rank its whole stage before sharding), the unsplit reference holds it again."""
    from ppplan.profiler.measure import host_available_bytes  # lazy: imports torch, which a run's parent avoids

    params = int(plan["model"]["total_params"])
    need = params * dtype_bytes * (1 + int(plan["degrees"]["tp"]))
    avail = host_available_bytes()
    if need > avail:
        gib = 1024**3
        raise ExecutorError(
            "device",
            rule=f"the {plan['model']['name']} weights need about {need / gib:.1f} GiB of host memory on CPU "
            f"(ranks plus the unsplit reference, {dtype_bytes} B per parameter) and {avail / gib:.1f} GiB are "
            "free; run a smaller model's plan on CPU, or this one with --device cuda",
        )


def run_plan(
    plan: dict[str, Any],
    *,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    checkpoint: str | None = None,
    prompt_tokens: int | None = None,
    new_tokens: int | None = None,
    micro_batches: int | None = None,
    micro_batch_size: int | None = None,
    timeout_s: float = 60.0,
    launch_opts: LaunchOptions | None = None,
    run_dir: Path | None = None,
    check: bool = True,
    warmup: bool = True,
    plan_id: str | None = None,
    load: LoadSpec | None = None,
    slow_ranks: dict[int, float] | None = None,
) -> dict[str, Any] | None:
    """Execute ``plan`` (Plan JSON v1 as a dict) and return the report (None on a node other than 0).

    Args:
        plan: the plan.
        device: 'cpu' (gloo ranks) or 'cuda' (NCCL when every local rank has its own GPU, otherwise
            gloo with activations staged through host memory).
        dtype: parameter and activation dtype.
        seed: seed of random weights and prompts.
        checkpoint: a .safetensors file or folder (default: seeded random weights).
        prompt_tokens, new_tokens, micro_batches, micro_batch_size: override the workload.
        timeout_s: longest wait on a receive or collective before a rank fails, seconds.
        launch_opts: nodes, node rank and rendezvous endpoint.
        run_dir: where ranks write logs and results (default a temporary folder, removed after).
        check: compare with the unsplit model (node 0).
        warmup: run a short unmeasured pass first.
        plan_id: the stored plan's id, copied into the report.
        load: serve this Poisson request stream with continuous batching (:mod:`executor.serve`)
            instead of the fixed micro-batch schedule; the report then has measured TTFT/TPOT.
        slow_ranks: global rank → factor ≥ 1 by which that rank's compute is stretched.

    Raises:
        ExecutorError: a plan or option the executor cannot run.
        RankFailedError: a rank failed or timed out.
    """
    opts = launch_opts or LaunchOptions()
    name = model_name_of(plan)
    notes = check_runnable(plan, device, dtype)
    wl, why = resolve_workload(
        plan,
        device,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        micro_batches=micro_batches,
        micro_batch_size=micro_batch_size,
    )
    pp, tp = plan["degrees"]["pp"], plan["degrees"]["tp"]
    ep = expert_degree(plan, wl.micro_batch_size, notes)
    world = pp * tp * ep
    wl = _check_load(load, tp * ep, world, slow_ranks) or wl
    backend: Literal["gloo", "nccl"] = "gloo"
    if device == "cuda":
        import torch  # lazy: importing the executor (the CLI) must not import torch

        local = world // opts.nnodes
        backend = "nccl" if local <= torch.cuda.device_count() else "gloo"
        if backend == "gloo":
            notes.append(
                f"{local} ranks share {torch.cuda.device_count()} GPU(s): NCCL needs one GPU per rank, "
                "so activations travel over gloo through host memory"
            )
    own_dir = run_dir is None
    rdir = Path(tempfile.mkdtemp(prefix="ppplan-run-")) if run_dir is None else Path(run_dir)
    rdir.mkdir(parents=True, exist_ok=True)
    for stale in ("result.json", "outputs.pt"):
        (rdir / stale).unlink(missing_ok=True)
    try:
        plan_path = rdir / "plan.json"
        plan_path.write_text(json.dumps(plan))
        spec = RunSpec(
            plan_path=str(plan_path),
            device=as_device(device),
            backend=backend,
            dtype=dtype,  # type: ignore[arg-type]
            workload={
                "prompt_tokens": wl.prompt_tokens,
                "new_tokens": wl.new_tokens,
                "micro_batches": wl.micro_batches,
                "micro_batch_size": wl.micro_batch_size,
            },
            seed=seed,
            checkpoint=checkpoint,
            out_dir=str(rdir),
            timeout_s=timeout_s,
            warmup=warmup,
            stage_first_rank=[s * tp * ep for s in range(pp)],
            tp=tp,
            ep=ep,
            stream=load.to_dict() if load is not None else None,
            slow_ranks={str(r): float(f) for r, f in (slow_ranks or {}).items()},
        )
        spec_path = rdir / "spec.json"
        spec.save(spec_path)
        launch(spec, spec_path, world, opts, rdir / "logs")
        if opts.node_rank != 0:
            return None
        result_path = rdir / "result.json"
        if not result_path.exists():
            raise RankFailedError(f"every rank exited cleanly but rank 0 wrote no {result_path}")
        result = json.loads(result_path.read_text())
        if load is not None:
            return _load_report(plan, result, rdir, name, load, notes, check=check, plan_id=plan_id)
        chk = None
        if check:
            import torch  # lazy: importing the executor (the CLI) must not import torch

            from ppplan.executor.reference import compare, reference_outputs  # lazy: imports torch

            outputs = torch.load(rdir / "outputs.pt")
            ref = reference_outputs(
                name, workload=result["workload"], seed=seed, dtype=dtype, device=device, checkpoint=checkpoint
            )
            chk = compare(outputs, ref, dtype).to_dict()
            if not own_dir:  # the caller keeps the run folder: keep the reference beside the outputs
                torch.save(ref, rdir / "reference.pt")
        report = build_report(plan, result, workload_note=why, check=chk, device=device, plan_id=plan_id)
        report["notes"].extend(notes)
        return report
    finally:
        if own_dir:
            shutil.rmtree(rdir, ignore_errors=True)


def expert_degree(plan: dict[str, Any], micro_batch_size: int, notes: list[str]) -> int:
    """The plan's expert-parallel degree as the executor runs it (``degrees.ep``, 1 when absent).

    EP > 1 runs attention data-parallel over the stage's EP ranks (DeepSeek's layout), so it needs
    TP 1, ``degrees.attention_dp`` equal to EP (or absent/1, taken as EP, noted) and a micro-batch
    that splits evenly over the EP ranks.

    Raises:
        ExecutorError: a layout the executor does not run, naming the field.
    """
    deg = plan["degrees"]
    ep, adp = int(deg.get("ep", 1) or 1), int(deg.get("attention_dp", 1) or 1)
    if ep == 1:
        return 1
    if int(deg["tp"]) != 1:
        raise ExecutorError(
            "degrees.ep", ep, rule=f"with TP {deg['tp']}: the executor runs EP with data-parallel attention, TP 1"
        )
    if adp not in (1, ep):
        raise ExecutorError("degrees.attention_dp", adp, rule=f"must equal degrees.ep ({ep}) in the executor")
    if adp == 1:
        notes.append(f"degrees.attention_dp is 1: attention runs data-parallel over the {ep} EP ranks")
    if micro_batch_size % ep:
        raise ExecutorError(
            "micro_batch_size", micro_batch_size, rule=f"must split evenly over the {ep} EP ranks (DP attention)"
        )
    return ep


def _check_load(load: LoadSpec | None, tp: int, world: int, slow_ranks: dict[int, float] | None) -> Workload | None:
    """Refuse a load run of a TP plan and slowed ranks outside the world; a load run's spec workload
    (it only bounds the shapes a rank may meet: the longest prompt and output the stream draws)."""
    bad = [r for r in (slow_ranks or {}) if not 0 <= r < world]
    if bad:
        raise ExecutorError("slow_rank", bad[0], rule=f"must be a rank in 0..{world - 1}")
    if load is None:
        return None
    if tp > 1:
        raise ExecutorError(
            "degrees", tp, rule="a load run (--workload) runs one rank per stage (no TP or EP): one scheduler per stage"
        )
    return Workload(
        prompt_tokens=min(4 * load.prompt_tokens, MAX_WORKLOAD["prompt_tokens"]),
        new_tokens=min(4 * load.output_tokens, MAX_WORKLOAD["new_tokens"]),
        micro_batches=min(load.groups, MAX_WORKLOAD["micro_batches"]),
        micro_batch_size=1,
    )


def _load_report(
    plan: dict[str, Any],
    result: dict[str, Any],
    rdir: Path,
    name: str,
    load: LoadSpec,
    notes: list[str],
    *,
    check: bool,
    plan_id: str | None,
) -> dict[str, Any]:
    """The report of a load run: every request's tokens and logits checked against the unsplit model
    (when ``check``), measured TTFT/TPOT percentiles next to the predicted ones."""
    import torch  # lazy: importing the executor (the CLI) must not import torch

    from ppplan.executor.load_report import build_load_report  # lazy: imports numpy
    from ppplan.executor.reference import compare_requests, reference_requests  # lazy: imports torch

    spec = RunSpec.load(rdir / "spec.json")
    chk = None
    if check:
        outputs = torch.load(rdir / "outputs.pt")
        reqs = [(r.index, r.prompt_tokens, r.output_tokens) for r in requests_of(load)]
        ref = reference_requests(
            name,
            reqs,
            seed=spec.seed,
            load_seed=load.seed,
            dtype=spec.dtype,
            device=spec.device,
            checkpoint=spec.checkpoint,
        )
        chk = compare_requests(outputs, ref, spec.dtype).to_dict()
    report = build_load_report(plan, result, load, check=chk, device=spec.device, plan_id=plan_id)
    report["notes"].extend(notes)
    return report

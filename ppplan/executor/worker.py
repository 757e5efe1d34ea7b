"""The program every rank runs (``python -m torch.distributed.run ... -m executor.worker SPEC``).

Stage s is global rank s (TP 1). Schedule, with M micro-batches on PP stages:

* prefill (GPipe fill): stage s runs micro-batch 0, 1, …, M-1 in order, receiving each from stage
  s-1 and sending it on with a non-blocking send, so stage s works on m while stage s+1 works on m-1;
* decode: N-1 rounds; in each, stage s runs micro-batches 0..M-1 one token each. The last stage
  takes the greedy argmax and sends the token ids back to stage 0 (the ring), which embeds them
  in the next round: with M ≥ PP every stage is busy, with M < PP the ring idles (the bubble).

Every receive waits at most ``timeout_s``: a dead neighbour turns into a ``RankFailedError`` naming
it, never a hang. Rank 0 gathers the measurements (and the last stage's tokens and logits) and
writes them atomically to the run folder.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ppplan.executor.schedule import FAIL_ENV, PhaseStats, Ring, run_schedule
from ppplan.executor.spec import RankFailedError, RunSpec
from ppplan.executor.stage import build_stage, dtype_of, tensor_parallelize

__all__ = ["FAIL_ENV", "PhaseStats", "main", "run_rank"]

WARMUP_NEW_TOKENS = 2


def _stage_params(rt: Any) -> list[torch.Tensor]:
    mods = [m for m in (rt.embed, *rt.layers, *rt.tail, rt.head) if m is not None]
    seen: dict[int, torch.Tensor] = {}
    for m in mods:
        for p in m.parameters():
            seen[id(p)] = p
    return list(seen.values())


def _local_bytes(p: torch.Tensor) -> int:
    local = p.to_local() if hasattr(p, "to_local") else p
    return local.numel() * local.element_size()


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    write(tmp)
    tmp.replace(path)


def run_rank(spec: RunSpec) -> None:
    """Run this process's rank of ``spec`` (environment from the torch launcher)."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    plan = json.loads(Path(spec.plan_path).read_text())
    stages = plan["stages"]
    pp = len(stages)
    inner = spec.tp * spec.ep  # ranks per stage
    if world != pp * inner:
        raise RankFailedError(
            f"world size {world} != {pp} stages × TP {spec.tp} × EP {spec.ep}: launch one process per rank"
        )
    if spec.device == "cuda":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, int(os.environ.get("PPPLAN_EXECUTOR_THREADS", "1"))))
    dist.init_process_group(
        spec.backend,
        timeout=_dt.timedelta(seconds=spec.timeout_s),
        device_id=device if spec.backend == "nccl" else None,
    )
    try:
        stage, tp_rank = divmod(rank, inner)  # tp_rank: the rank inside its stage (TP or EP)
        t0 = time.perf_counter()
        rt, wbytes = build_stage(
            plan["model_source"].removeprefix("preset:"),
            stages[stage]["modules"],
            seed=spec.seed,
            device=device,
            dtype=dtype_of(spec.dtype),
            checkpoint=spec.checkpoint,
        )
        tp_notes: list[str] = []
        if spec.tp > 1:
            from torch.distributed.device_mesh import init_device_mesh  # lazy: DTensor loads only for TP > 1

            mesh = init_device_mesh(device.type, (pp, spec.tp), mesh_dim_names=("pp", "tp"))
            tp_notes = tensor_parallelize(rt, mesh["tp"])
            wbytes = sum(_local_bytes(p) for p in _stage_params(rt))
        if spec.ep > 1:
            from ppplan.executor.experts import expert_parallelize  # lazy: only EP runs need it

            # every rank creates every stage's group, in the same order (torch.distributed's rule)
            groups = [dist.new_group(list(range(s * inner, (s + 1) * inner))) for s in range(pp)]
            tp_notes = expert_parallelize(rt, groups[stage], tp_rank, spec.ep)
            wbytes = sum(_local_bytes(p) for p in _stage_params(rt))
        build_s = time.perf_counter() - t0
        ring = Ring(spec, stage, pp, device, tp_rank)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        served: dict[str, Any] | None = None
        if spec.stream is not None:
            served, out, run_s = _serve_load(rt, ring, spec)
            stats: dict[str, PhaseStats] = {}
        else:
            if spec.warmup:
                new = min(WARMUP_NEW_TOKENS, spec.load_workload.new_tokens)
                run_schedule(rt, ring, spec, new, wbytes, measure=False)
            dist.barrier()
            t_run = time.perf_counter()
            stats, out = run_schedule(rt, ring, spec, spec.load_workload.new_tokens, wbytes, measure=True)
            run_s = time.perf_counter() - t_run
        mine = {
            "rank": rank,
            "stage": stage,
            "tp_rank": tp_rank,
            "tp_notes": tp_notes,
            "host": os.uname().nodename,
            "device": str(device),
            "weight_bytes": wbytes,
            "build_s": build_s,
            "run_s": run_s,
            "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rss_before_run_bytes": rss0 * 1024,
            "phases": {k: v.to_dict() for k, v in stats.items()},
        }
        if served is not None:
            mine["load"] = served
        if spec.ep > 1:
            from ppplan.executor.experts import dispatch_counts  # lazy: only EP runs need it

            mine["ep_dispatch"] = dispatch_counts(rt)
        gathered: list[Any] = [None] * world if rank == 0 else []
        # EP ranks each hold their share of the sequences; TP ranks all hold the same ones
        keep = tp_rank == 0 or spec.ep > 1
        dist.gather_object((mine, (out or None) if keep else None), gathered if rank == 0 else None, dst=0)
        if rank == 0:
            _write_results(spec, plan, gathered)
        dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _serve_load(rt: Any, ring: Ring, spec: RunSpec) -> tuple[dict[str, Any], dict[str, Any], float]:
    """A load run on this rank: a short unmeasured stream first (allocator, sockets), then the
    measured one. Returns (measurements, outputs for the check, seconds)."""
    from ppplan.executor.arrivals import LoadSpec  # lazy: only load runs need it
    from ppplan.executor.serve import serve  # lazy: only load runs need it

    assert spec.stream is not None
    load = LoadSpec(**spec.stream)
    if spec.warmup:
        warm = dataclasses.replace(load, requests=min(2, load.requests), rate=1e6, output_tokens=2)
        serve(rt, ring, spec, warm)
    dist.barrier()
    t_run = time.perf_counter()
    served = serve(rt, ring, spec, load)
    run_s = time.perf_counter() - t_run
    out: dict[str, Any] = {}
    if "logits" in served:
        out["logits"] = served.pop("logits")
    if "timeline" in served:
        out["tokens"] = {r["index"]: r["tokens"] for r in served["timeline"]}
    return served, out, run_s


def _write_results(spec: RunSpec, plan: dict[str, Any], gathered: list[Any]) -> None:
    per_rank = sorted((g[0] for g in gathered), key=lambda r: r["rank"])
    outputs: dict[str, Any] = {}
    shares = [g[1] for g in sorted(gathered, key=lambda g: g[0]["rank"]) if g[1]]
    if spec.ep > 1:  # each EP rank of the last stage holds a slice of every micro-batch's sequences
        outputs = {k: torch.cat([o[k] for o in shares], dim=1) for k in ("tokens", "logits")}
    for o in shares if spec.ep == 1 else []:  # a load run: tokens come from stage 0, logits from the last
        outputs.update(o)
    out_dir = Path(spec.out_dir)
    _atomic_write(out_dir / "outputs.pt", lambda p: torch.save(outputs, p))
    result = {
        "ranks": per_rank,
        "world_size": len(per_rank),
        "tp": spec.tp,
        "backend": spec.backend,
        "torch": torch.__version__,
        "workload": spec.workload,
    }
    if spec.stream is not None:
        result["load"] = spec.stream
    # result.json last: its presence means the run completed and outputs.pt is whole
    _atomic_write(out_dir / "result.json", lambda p: p.write_text(json.dumps(result, indent=1)))


def main(spec_path: str | None = None) -> None:
    """Entry point of one rank: ``python -m executor.worker RUN_DIR/spec.json`` under the launcher."""
    path = spec_path or sys.argv[1]
    spec = RunSpec.load(Path(path))
    try:
        run_rank(spec)
    except RankFailedError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise
    except Exception:
        traceback.print_exc()
        raise


if __name__ == "__main__":
    main()

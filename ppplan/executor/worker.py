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

import datetime as _dt
import json
import os
import resource
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ppplan.executor.spec import RankFailedError, RunSpec

__all__ = ["FAIL_ENV", "PhaseStats", "main", "run_rank"]

#: test hook: ``RANK:PHASE:STEP`` makes that rank exit abruptly (status 17) at that point, e.g. ``1:decode:2``
FAIL_ENV = "PPPLAN_EXECUTOR_FAIL"
WARMUP_NEW_TOKENS = 2


@dataclass(slots=True)
class PhaseStats:
    """Measurements of one stage in one phase (seconds and bytes)."""

    compute_s: list[float] = field(default_factory=list)
    """compute time of each micro-batch step (module forwards, synchronised on GPU)"""
    wait_s: float = 0.0
    """time blocked in receives: the bubble plus the transfer"""
    bytes_sent: int = 0
    """activation or token bytes sent to the next rank in the ring"""
    peak_bytes: int = 0
    """GPU: torch.cuda.max_memory_allocated during the phase; CPU: weights + KV cache + the largest
    activation this stage held (tracked tensor bytes, not the process RSS)"""
    send_s: float = 0.0
    """time spent posting sends (non-blocking; copies to host on a shared GPU)"""
    wall_s: float = 0.0
    """wall time of the phase on this rank"""

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form written to result.json."""
        c = sorted(self.compute_s)
        return {
            "compute_s": sum(c),
            "steps": len(c),
            "median_step_s": c[len(c) // 2] if c else 0.0,
            "step_s": self.compute_s,
            "wait_s": self.wait_s,
            "bytes_sent": self.bytes_sent,
            "peak_bytes": self.peak_bytes,
            "send_s": self.send_s,
            "wall_s": self.wall_s,
        }


class _Ring:
    """Point-to-point traffic of one rank, with timeouts and byte counts."""

    def __init__(self, spec: RunSpec, stage: int, pp: int, device: torch.device, tp_rank: int = 0) -> None:
        self.spec = spec
        self.tp_rank = tp_rank
        self.stage = stage
        self.pp = pp
        self.device = device
        self.timeout = _dt.timedelta(seconds=spec.timeout_s)
        self.pending: list[tuple[Any, torch.Tensor]] = []
        # with gloo on a CUDA run (ranks sharing one GPU) tensors travel through host memory
        self.staged = spec.backend == "gloo" and device.type == "cuda"

    def rank_of(self, stage: int) -> int:
        # TP rank j of a stage talks to TP rank j of its neighbours: every TP rank holds the
        # full (all-reduced) activations, so no broadcast inside a stage is needed
        return self.spec.stage_first_rank[stage] + self.tp_rank

    def send(self, t: torch.Tensor, to_stage: int, stats: PhaseStats) -> None:
        t0 = time.perf_counter()
        buf = t.detach().to("cpu") if self.staged else t.detach().contiguous()
        work = dist.isend(buf, dst=self.rank_of(to_stage))
        self.pending.append((work, buf))
        stats.bytes_sent += buf.numel() * buf.element_size()
        self.pending = [(w, b) for w, b in self.pending if not w.is_completed()]
        stats.send_s += time.perf_counter() - t0

    def recv(
        self, shape: tuple[int, ...], dtype: torch.dtype, from_stage: int, what: str, stats: PhaseStats
    ) -> torch.Tensor:
        buf = torch.empty(shape, dtype=dtype, device="cpu" if self.staged else self.device)
        t0 = time.perf_counter()
        src = self.rank_of(from_stage)
        try:
            work = dist.irecv(buf, src=src)
            ok = work.wait(timeout=self.timeout)
            if ok is False:
                raise RuntimeError("wait returned False")
        except RuntimeError as exc:
            raise RankFailedError(
                f"stage {self.stage} (rank {dist.get_rank()}): no {what} from stage {from_stage} (rank {src}) "
                f"within {self.spec.timeout_s:g} s — that rank died or hangs ({str(exc).splitlines()[0]})"
            ) from None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        stats.wait_s += time.perf_counter() - t0
        return buf.to(self.device) if self.staged else buf

    def flush(self) -> None:
        for work, _ in self.pending:
            work.wait(timeout=self.timeout)
        self.pending = []


def _maybe_fail(rank: int, phase: str, step: int) -> None:
    hook = os.environ.get(FAIL_ENV)
    if not hook:
        return
    r, ph, st = hook.split(":")
    if int(r) == rank and ph == phase and int(st) == step:
        print(f"[executor test hook] rank {rank} exits at {phase} step {step}", file=sys.stderr, flush=True)
        os._exit(17)


def prompts(seed: int, vocab: int, micro_batches: int, micro_batch_size: int, prompt_tokens: int) -> torch.Tensor:
    """The run's prompt token ids ``[M, b, P]`` (int64, CPU), a function of the seed only."""
    g = torch.Generator(device="cpu")
    g.manual_seed(seed + 1_000_003)
    return torch.randint(0, vocab, (micro_batches, micro_batch_size, prompt_tokens), generator=g)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cache_bytes(caches: list[Any]) -> int:
    total = 0
    for c in caches:
        for layer in getattr(c, "layers", []):
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if isinstance(t, torch.Tensor) and t.device.type != "meta":
                    total += t.numel() * t.element_size()
    return total


def run_schedule(
    rt: Any, ring: _Ring, spec: RunSpec, new_tokens: int, weight_bytes: int, *, measure: bool
) -> tuple[dict[str, PhaseStats], dict[str, torch.Tensor]]:
    """Prefill then ``new_tokens - 1`` decode rounds on this rank; returns stats and (last stage) outputs."""
    wl = spec.load_workload
    M, b, P = wl.micro_batches, wl.micro_batch_size, wl.prompt_tokens
    s, pp = ring.stage, ring.pp
    dev, act_dtype = ring.device, rt.dtype
    H = rt.hidden_size
    rank = dist.get_rank()
    ids = prompts(spec.seed, int(rt.hf_config.vocab_size), M, b, P) if rt.is_first else None
    caches = [rt.new_cache() for _ in range(M)]
    stats = {"prefill": PhaseStats(), "decode": PhaseStats()}
    tokens: list[list[torch.Tensor]] = [[] for _ in range(M)]
    logits: list[list[torch.Tensor]] = [[] for _ in range(M)]
    next_in: list[torch.Tensor | None] = [None] * M  # pp == 1: the token stays local
    largest_act = 0
    cuda = dev.type == "cuda"

    def step(phase: str, m: int, n_tok: int, start: int, rnd: int) -> None:
        nonlocal largest_act
        st = stats[phase]
        if measure:
            _maybe_fail(rank, phase, rnd)
        if rt.is_first:
            if phase == "prefill":
                x = ids[m].to(dev)
            elif pp == 1:
                x = next_in[m]
            else:
                x = ring.recv((b, 1), torch.int64, pp - 1, f"token ids of micro-batch {m}", st)
        else:
            x = ring.recv((b, n_tok, H), act_dtype, s - 1, f"activations of micro-batch {m}", st)
        _sync(dev)
        t0 = time.perf_counter()
        y = rt.forward(x, start, caches[m])
        if rt.is_last:
            tok = y.argmax(dim=-1, keepdim=True)
        _sync(dev)
        st.compute_s.append(time.perf_counter() - t0)
        largest_act = max(largest_act, y.numel() * y.element_size(), x.numel() * x.element_size())
        if rt.is_last:
            tokens[m].append(tok.squeeze(-1).cpu())
            logits[m].append(y.cpu())
            more = rnd < new_tokens - 1  # stage 0 needs this token for another round
            if more and pp > 1:
                ring.send(tok, 0, st)
            elif more:
                next_in[m] = tok
        else:
            ring.send(y, s + 1, st)

    for phase in ("prefill", "decode"):
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        t_phase = time.perf_counter()
        if phase == "prefill":
            for m in range(M):
                step("prefill", m, P, 0, 0)
        else:
            for rnd in range(1, new_tokens):
                for m in range(M):
                    step("decode", m, 1, P + rnd - 1, rnd)
        _sync(dev)
        st = stats[phase]
        st.wall_s = time.perf_counter() - t_phase
        st.peak_bytes = (
            torch.cuda.max_memory_allocated(dev) if cuda else weight_bytes + _cache_bytes(caches) + largest_act
        )
    ring.flush()
    out: dict[str, torch.Tensor] = {}
    if rt.is_last:
        out = {
            "tokens": torch.stack([torch.stack(t, dim=1) for t in tokens]),  # [M, b, N]
            "logits": torch.stack([torch.stack(lg, dim=1) for lg in logits]),
        }  # [M, b, N, vocab]
    return stats, out


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
    from ppplan.executor.stage import build_stage, dtype_of

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    plan = json.loads(Path(spec.plan_path).read_text())
    stages = plan["stages"]
    pp = len(stages)
    if world != pp * spec.tp:
        raise RankFailedError(f"world size {world} != {pp} stages × TP {spec.tp}: launch one process per rank")
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
        stage, tp_rank = divmod(rank, spec.tp)
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
            from torch.distributed.device_mesh import init_device_mesh

            from ppplan.executor.stage import tensor_parallelize

            mesh = init_device_mesh(device.type, (pp, spec.tp), mesh_dim_names=("pp", "tp"))
            tp_notes = tensor_parallelize(rt, mesh["tp"])
            wbytes = sum(_local_bytes(p) for p in _stage_params(rt))
        build_s = time.perf_counter() - t0
        ring = _Ring(spec, stage, pp, device, tp_rank)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if spec.warmup:
            run_schedule(rt, ring, spec, min(WARMUP_NEW_TOKENS, spec.load_workload.new_tokens), wbytes, measure=False)
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
        gathered: list[Any] = [None] * world if rank == 0 else []
        dist.gather_object((mine, (out or None) if tp_rank == 0 else None), gathered if rank == 0 else None, dst=0)
        if rank == 0:
            _write_results(spec, plan, gathered)
        dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _write_results(spec: RunSpec, plan: dict[str, Any], gathered: list[Any]) -> None:
    per_rank = sorted((g[0] for g in gathered), key=lambda r: r["rank"])
    outputs = next(g[1] for g in gathered if g[1])
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

"""The pipeline schedule one rank runs (see :mod:`ppplan.executor.worker` for the whole picture):
point-to-point traffic with timeouts (:class:`Ring`), the per-phase measurements
(:class:`PhaseStats`) and :func:`run_schedule`."""

from __future__ import annotations

import datetime as _dt
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from ppplan.executor.spec import RankFailedError, RunSpec

__all__ = ["FAIL_ENV", "PhaseStats", "PostedRecv", "Ring", "prompts", "run_schedule", "stretch"]

#: test hook: ``RANK:PHASE:STEP`` makes that rank exit abruptly (status 17) at that point, e.g. ``1:decode:2``
FAIL_ENV = "PPPLAN_EXECUTOR_FAIL"


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


@dataclass(frozen=True, slots=True)
class PostedRecv:
    """A receive posted with :meth:`Ring.post_recv`."""

    work: Any
    buf: torch.Tensor
    stage: int
    src: int


class Ring:
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
        if work is not None:  # None only when this rank is not in the group, which a ring never is
            self.pending.append((work, buf))
        stats.bytes_sent += buf.numel() * buf.element_size()
        self.pending = [(w, b) for w, b in self.pending if not w.is_completed()]
        stats.send_s += time.perf_counter() - t0

    def post_recv(self, shape: tuple[int, ...], dtype: torch.dtype, from_stage: int) -> PostedRecv:
        """Post a receive now and wait for it later (:meth:`wait`): gloo delivers a message only once
        its receive is posted, so posting early spares the sender a round trip."""
        buf = torch.empty(shape, dtype=dtype, device="cpu" if self.staged else self.device)
        src = self.rank_of(from_stage)
        try:
            return PostedRecv(dist.irecv(buf, src=src), buf, from_stage, src)
        except RuntimeError as exc:  # the peer's connection is already gone
            raise RankFailedError(
                f"stage {self.stage} (rank {dist.get_rank()}): cannot receive from stage {from_stage} "
                f"(rank {src}) — that rank died ({str(exc).splitlines()[0]})"
            ) from None

    def wait(self, posted: PostedRecv, what: str, stats: PhaseStats, timeout_s: float | None = None) -> torch.Tensor:
        """The tensor of a posted receive, waiting at most ``timeout_s`` (default the spec's): a dead
        neighbour becomes a :class:`RankFailedError` naming it."""
        t0 = time.perf_counter()
        limit = self.spec.timeout_s if timeout_s is None else timeout_s
        try:
            ok = posted.work is not None and posted.work.wait(timeout=_dt.timedelta(seconds=limit))
            if ok is False:
                raise RuntimeError("wait returned False")
        except RuntimeError as exc:
            raise RankFailedError(
                f"stage {self.stage} (rank {dist.get_rank()}): no {what} from stage {posted.stage} "
                f"(rank {posted.src}) within {limit:g} s — that rank died or hangs ({str(exc).splitlines()[0]})"
            ) from None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        stats.wait_s += time.perf_counter() - t0
        return posted.buf.to(self.device) if self.staged else posted.buf

    def recv(
        self,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        from_stage: int,
        what: str,
        stats: PhaseStats,
        timeout_s: float | None = None,
    ) -> torch.Tensor:
        """Receive a tensor of ``shape`` from ``from_stage`` (see :meth:`wait`)."""
        return self.wait(self.post_recv(shape, dtype, from_stage), what, stats, timeout_s)

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


def stretch(spec: RunSpec, t0: float) -> None:
    """Make a step that started at ``t0`` (``time.perf_counter``) last ``factor`` times as long on a
    rank listed in ``spec.slow_ranks`` (a slower device for mixed-speed plans; sleeping keeps the CPU
    free for the other ranks)."""
    factor = spec.slow_ranks.get(str(dist.get_rank()), 1.0)
    if factor > 1.0:
        time.sleep((factor - 1.0) * (time.perf_counter() - t0))


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


@dataclass(slots=True)
class _Schedule:
    """The state of one pass of :func:`run_schedule` on this rank: caches, stats and outputs."""

    rt: Any
    ring: Ring
    spec: RunSpec
    new_tokens: int
    measure: bool
    ids: torch.Tensor | None
    """prompt token ids ``[M, b, P]`` (first stage only)"""
    caches: list[Any]
    stats: dict[str, PhaseStats] = field(default_factory=lambda: {"prefill": PhaseStats(), "decode": PhaseStats()})
    tokens: list[list[torch.Tensor]] = field(default_factory=list)
    logits: list[list[torch.Tensor]] = field(default_factory=list)
    next_in: list[torch.Tensor | None] = field(default_factory=list)
    """pp == 1: each micro-batch's next input token stays local"""
    largest_act: int = 0
    """bytes of the largest activation this stage held"""

    def _input(self, phase: str, m: int, n_tok: int, st: PhaseStats) -> torch.Tensor:
        rt, ring, b = self.rt, self.ring, self.spec.load_workload.micro_batch_size // self.spec.ep
        if not rt.is_first:
            shape = (b, n_tok, rt.hidden_size)
            return ring.recv(shape, rt.dtype, ring.stage - 1, f"activations of micro-batch {m}", st)
        if phase == "prefill":
            assert self.ids is not None  # the first stage always has its prompts
            return self.ids[m].to(ring.device)
        if ring.pp == 1:
            x = self.next_in[m]
            assert x is not None  # set by the previous round
            return x
        return ring.recv((b, 1), torch.int64, ring.pp - 1, f"token ids of micro-batch {m}", st)

    def step(self, phase: str, m: int, n_tok: int, start: int, rnd: int) -> None:
        """Run micro-batch ``m`` of round ``rnd`` through this stage: receive, compute, send on."""
        rt, ring, dev = self.rt, self.ring, self.ring.device
        st = self.stats[phase]
        if self.measure:
            _maybe_fail(dist.get_rank(), phase, rnd)
        x = self._input(phase, m, n_tok, st)
        _sync(dev)
        t0 = time.perf_counter()
        y = rt.forward(x, start, self.caches[m])
        tok = y.argmax(dim=-1, keepdim=True) if rt.is_last else None
        _sync(dev)
        stretch(self.spec, t0)
        st.compute_s.append(time.perf_counter() - t0)
        self.largest_act = max(self.largest_act, y.numel() * y.element_size(), x.numel() * x.element_size())
        if tok is None:
            ring.send(y, ring.stage + 1, st)
            return
        self.tokens[m].append(tok.squeeze(-1).cpu())
        self.logits[m].append(y.cpu())
        if rnd < self.new_tokens - 1:  # stage 0 needs this token for another round
            if ring.pp > 1:
                ring.send(tok, 0, st)
            else:
                self.next_in[m] = tok

    def run_phase(self, phase: str, weight_bytes: int) -> None:
        """All steps of ``phase`` (prefill: one per micro-batch; decode: ``new_tokens - 1`` rounds)."""
        wl, dev = self.spec.load_workload, self.ring.device
        cuda = dev.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        t_phase = time.perf_counter()
        if phase == "prefill":
            for m in range(wl.micro_batches):
                self.step("prefill", m, wl.prompt_tokens, 0, 0)
        else:
            for rnd in range(1, self.new_tokens):
                for m in range(wl.micro_batches):
                    self.step("decode", m, 1, wl.prompt_tokens + rnd - 1, rnd)
        _sync(dev)
        st = self.stats[phase]
        st.wall_s = time.perf_counter() - t_phase
        st.peak_bytes = (
            torch.cuda.max_memory_allocated(dev)
            if cuda
            else weight_bytes + _cache_bytes(self.caches) + self.largest_act
        )

    def outputs(self) -> dict[str, torch.Tensor]:
        """The last stage's tokens ``[M, b, N]`` and logits ``[M, b, N, vocab]``; empty elsewhere."""
        if not self.rt.is_last:
            return {}
        return {
            "tokens": torch.stack([torch.stack(t, dim=1) for t in self.tokens]),
            "logits": torch.stack([torch.stack(lg, dim=1) for lg in self.logits]),
        }


def run_schedule(
    rt: Any, ring: Ring, spec: RunSpec, new_tokens: int, weight_bytes: int, *, measure: bool
) -> tuple[dict[str, PhaseStats], dict[str, torch.Tensor]]:
    """Prefill then ``new_tokens - 1`` decode rounds on this rank; returns stats and (last stage) outputs."""
    wl = spec.load_workload
    M = wl.micro_batches
    ids = None
    if rt.is_first:
        ids = prompts(spec.seed, int(rt.hf_config.vocab_size), M, wl.micro_batch_size, wl.prompt_tokens)
        if spec.ep > 1:  # attention data-parallel over the EP ranks: this rank's share of the sequences
            share = wl.micro_batch_size // spec.ep
            ids = ids[:, ring.tp_rank * share : (ring.tp_rank + 1) * share]
    sched = _Schedule(
        rt=rt,
        ring=ring,
        spec=spec,
        new_tokens=new_tokens,
        measure=measure,
        ids=ids,
        caches=[rt.new_cache() for _ in range(M)],
        tokens=[[] for _ in range(M)],
        logits=[[] for _ in range(M)],
        next_in=[None] * M,
    )
    for phase in ("prefill", "decode"):
        sched.run_phase(phase, weight_bytes)
    ring.flush()
    return sched.stats, sched.outputs()

"""Continuous batching over the pipeline: what one rank runs in a load run (``--workload poisson:...``).

Stage 0 is the scheduler. Requests arrive on their Poisson times (:func:`arrivals.requests_of`);
running sequences belong to one of G groups (the plan's micro-batches, vLLM's "virtual engines"),
and each group has at most one engine step in the pipeline at a time, so with G ≥ PP every stage
has work. Visiting the groups round-robin, stage 0 takes a group's tokens back from the last stage
(the ring), then builds the group's next step:

1. one decode token for each of the group's running sequences;
2. prefill chunks of waiting requests, first come first served, up to the token budget per step
   (decode tokens count against it) and while fewer than ``max_seqs`` sequences are admitted; a
   request whose last chunk is in the step samples its first token there and then decodes in the
   group with the fewest sequences.

A step travels through the stages as one fixed-size message (:data:`MESSAGE_BYTES`: a header, the
entry table of request, tokens, start position, samples? and, when they fit, the packed
activations; else they follow), whose receive the next stage posts in advance; the last stage
sends the sampled token ids back to stage 0, which posted that receive when it sent the step.

Each entry runs its own forward over its own KV cache: transformers' ``DynamicCache`` holds one
common length per batch and a ragged batch would need paged attention, which the executor does
not have. A step therefore costs a fixed part, a part per entry and a part per prefill token —
the form :class:`ppplan.partitioner.load.ReplicaCost` assumes.

Measured: per request the arrival, first-token and last-token times on stage 0 (TTFT, TPOT); per
stage and step its composition, its compute time and its busy time (compute plus the step's
scheduling, token bookkeeping and send posting: what occupies the stage) and when its input was
there and its output sent (stage 0: also when its tokens came back), for the fit of the step-cost
coefficients and of the hop latency between stages.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from ppplan.executor.arrivals import LoadSpec, Request, requests_of
from ppplan.executor.schedule import PhaseStats, PostedRecv, Ring, stretch
from ppplan.executor.spec import RunSpec

__all__ = ["request_prompt", "serve"]

_STOP = -1
#: entry table columns: request index, tokens (0 = drop this request's cache), start position, and
#: 0 (a prefill chunk that samples nothing), 1 (a prompt's last chunk: samples) or 2 (a decode token)
_COLS = 4
_DECODE = 2
#: bytes of the one message every step sends to the next stage (header, entry table, activations
#: when they fit): its receive is posted in advance, so gloo delivers it without a round trip to
#: the sender. Decode steps of small models fit; larger steps send their activations after it
MESSAGE_BYTES = 64 * 1024
_HEAD = 24


def request_prompt(seed: int, index: int, vocab: int, tokens: int) -> torch.Tensor:
    """Prompt token ids ``[tokens]`` of request ``index`` (int64, CPU), a function of the seed only."""
    g = torch.Generator(device="cpu")
    g.manual_seed(int.from_bytes(hashlib.sha256(f"ppplan-request:{seed}:{index}".encode()).digest()[:7], "big"))
    return torch.randint(0, vocab, (tokens,), generator=g)


@dataclass(slots=True)
class _Seq:
    req: Request
    ids: torch.Tensor
    prefilled: int = 0
    tokens: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    """seconds after the stream start at which stage 0 had each token"""
    admitted_s: float | None = None
    group: int = 0
    """the group it decodes in"""


@dataclass(slots=True)
class _Group:
    running: list[int] = field(default_factory=list)
    inflight: list[tuple[int, int, int, int]] | None = None
    step: int = -1
    """index of the in-flight step in stage 0's records"""
    posted: PostedRecv | None = None
    """the receive of the in-flight step's sampled tokens"""


def _early(ring: Ring) -> bool:
    """Post receives ahead of need: on gloo it spares the sender a round trip; NCCL runs a pair's
    sends and receives in order on one stream, so a receive posted early would hold back the sends
    behind it (a ring of two stages would deadlock): there receives are posted when needed."""
    return ring.spec.backend == "gloo"


def _stamp(rec: dict[str, float], t_in: float) -> None:
    """Close a step record: ``in_t`` when its input was there, ``out_t`` when it was sent on
    (``time.perf_counter``, the host's monotonic clock: comparable across the ranks of one host),
    ``busy_s`` the time in between."""
    now = time.perf_counter()
    rec.update(in_t=t_in, out_t=now, busy_s=now - t_in)


@dataclass(slots=True)
class _Stage:
    """One rank's side of the engine: its stage, the ring, caches and the per-step records."""

    rt: Any
    ring: Ring
    spec: RunSpec
    caches: dict[int, Any] = field(default_factory=dict)
    steps: list[dict[str, float]] = field(default_factory=list)
    logits: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    stats: PhaseStats = field(default_factory=PhaseStats)
    posted: PostedRecv | None = None
    """the receive of the next step's message, posted in advance"""
    t_start: float = field(default_factory=time.perf_counter)
    """when this rank started serving (``time.perf_counter``): steps record their start after it"""

    def compute(self, entries: list[tuple[int, int, int, int]], x: torch.Tensor | list[torch.Tensor]) -> Any:
        """Run the stage over a step's entries; ``x`` is packed hidden states ``[1, T, H]`` or, on
        the first stage, one id tensor per entry. Returns packed hidden states or (last stage) the
        sampled token ids."""
        rt, dev = self.rt, self.ring.device
        outs, toks, off, dec, pre = [], [], 0, 0, 0
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        live = [e for e in entries if e[1] > 0]
        for k, (idx, n, start, sample) in enumerate(live):
            if isinstance(x, list):
                xi = x[k].to(dev).unsqueeze(0)
            else:
                xi, off = x[:, off : off + n], off + n
            cache = self.caches.setdefault(idx, rt.new_cache())
            y = rt.forward(xi, start, cache, head=bool(sample))
            if sample == _DECODE:
                dec += 1
            else:
                pre += n
            if rt.is_last:
                if sample:
                    self.logits.setdefault(idx, []).append(y[0].float().cpu())
                    toks.append(y[0].argmax(-1))
            else:
                outs.append(y)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        stretch(self.spec, t0)
        dt = time.perf_counter() - t0
        for idx, n, _, _ in entries:
            if n == 0:
                self.caches.pop(idx, None)
        self.stats.compute_s.append(dt)
        self.steps.append(
            {"entries": len(live), "decode": dec, "prefill_tokens": pre, "compute_s": dt, "t_s": t0 - self.t_start}
        )
        if rt.is_last:
            return torch.stack(toks).to(torch.int64) if toks else torch.empty(0, dtype=torch.int64)
        return torch.cat(outs, dim=1) if outs else torch.empty(1, 0, rt.hidden_size, dtype=rt.dtype, device=dev)

    def send_step(self, entries: list[tuple[int, int, int, int]], h: torch.Tensor) -> None:
        """Pass a step on to the next stage: one message of :data:`MESSAGE_BYTES` (header, entry
        table and, when they fit, the activations), then the rest when they do not fit."""
        nxt = self.ring.stage + 1
        table = torch.tensor(entries, dtype=torch.int64).reshape(-1, _COLS)
        act = h.contiguous().view(torch.uint8).flatten()
        body = torch.cat([table.view(torch.uint8).flatten(), act.cpu() if act.device.type != "cpu" else act])
        inline = _HEAD + body.numel() <= MESSAGE_BYTES
        msg = torch.zeros(MESSAGE_BYTES, dtype=torch.uint8)
        msg[:_HEAD] = torch.tensor([len(entries), h.shape[1], int(inline)], dtype=torch.int64).view(torch.uint8)
        if inline:
            msg[_HEAD : _HEAD + body.numel()] = body
        self.ring.send(msg.to(h.device), nxt, self.stats)
        if not inline:
            self.ring.send(body.to(h.device), nxt, self.stats)

    def send_stop(self) -> None:
        """Tell the next stage the stream ended."""
        msg = torch.zeros(MESSAGE_BYTES, dtype=torch.uint8)
        msg[:_HEAD] = torch.tensor([_STOP, 0, 1], dtype=torch.int64).view(torch.uint8)
        self.ring.send(msg.to(self.ring.device), self.ring.stage + 1, self.stats)

    def recv_step(self, idle_s: float) -> tuple[list[tuple[int, int, int, int]], torch.Tensor] | None:
        """The next step from the previous stage (None: the stream ended); waits up to ``idle_s``.
        The receive of the following message is posted before returning."""
        prev, ring, rt = self.ring.stage - 1, self.ring, self.rt
        if self.posted is None:
            self.posted = ring.post_recv((MESSAGE_BYTES,), torch.uint8, prev)
        msg = ring.wait(self.posted, "the next step", self.stats, timeout_s=idle_s).cpu()
        self.posted = None
        n, tokens, inline = (int(v) for v in msg[:_HEAD].view(torch.int64))
        if n == _STOP:
            return None
        cut = n * _COLS * 8
        size = cut + tokens * rt.hidden_size * torch.empty((), dtype=rt.dtype).element_size()
        if inline:
            body = msg[_HEAD : _HEAD + size].clone()
        else:
            body = ring.recv((size,), torch.uint8, prev, "a step's activations", self.stats).cpu()
        if _early(ring):
            self.posted = ring.post_recv((MESSAGE_BYTES,), torch.uint8, prev)
        table = body[:cut].view(torch.int64).reshape(n, _COLS)
        h = body[cut:].view(rt.dtype).reshape(1, tokens, rt.hidden_size).to(ring.device)
        return [(int(a), int(b), int(c), int(d)) for a, b, c, d in table.tolist()], h


class _Scheduler:
    """Stage 0's side: arrivals, admission, groups and the per-request timeline."""

    def __init__(self, st: _Stage, load: LoadSpec, vocab: int) -> None:
        self.st, self.load = st, load
        self.reqs = requests_of(load)
        self.seqs = [_Seq(r, request_prompt(load.seed, r.index, vocab, r.prompt_tokens)) for r in self.reqs]
        self.groups = [_Group() for _ in range(load.groups)]
        self.queue: deque[int] = deque()
        self.next_arrival = 0
        self.admitted = 0
        self.finished = 0
        self.to_free: list[int] = []
        self.t0 = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def _arrive(self) -> None:
        now = self.now()
        while self.next_arrival < len(self.reqs) and self.reqs[self.next_arrival].arrival_s <= now:
            self.queue.append(self.next_arrival)
            self.next_arrival += 1

    def _take_tokens(self, g: _Group, toks: torch.Tensor) -> None:
        now = self.now()
        sampled = [e for e in g.inflight or [] if e[3]]
        for (idx, _, _, _), tok in zip(sampled, toks.tolist(), strict=True):
            s = self.seqs[idx]
            s.tokens.append(int(tok))
            s.times.append(now)
            home = self.groups[s.group]
            if len(s.tokens) == 1:
                home.running.append(idx)
            if len(s.tokens) >= s.req.output_tokens:
                home.running.remove(idx)
                self.finished += 1
                self.admitted -= 1
                self.to_free.append(idx)
        g.inflight = None

    def _build(self, g: _Group) -> tuple[list[tuple[int, int, int, int]], list[torch.Tensor]]:
        entries: list[tuple[int, int, int, int]] = [(i, 0, 0, 0) for i in self.to_free]
        ids: list[torch.Tensor] = []
        self.to_free = []
        for idx in g.running:
            s = self.seqs[idx]
            entries.append((idx, 1, s.req.prompt_tokens + len(s.tokens) - 1, _DECODE))
            ids.append(torch.tensor([s.tokens[-1]], dtype=torch.int64))
        budget = self.load.token_budget - len(g.running)
        while self.queue and budget > 0:
            idx = self.queue[0]
            s = self.seqs[idx]
            if s.prefilled == 0:
                if self.admitted >= self.load.max_seqs:
                    break
                self.admitted += 1
                s.admitted_s = self.now()
            n = min(budget, s.req.prompt_tokens - s.prefilled)
            done = s.prefilled + n == s.req.prompt_tokens
            entries.append((idx, n, s.prefilled, int(done)))
            ids.append(s.ids[s.prefilled : s.prefilled + n])
            s.prefilled += n
            budget -= n
            if done:  # decode in the group with the fewest sequences (the decodes spread over the groups)
                s.group = min(range(len(self.groups)), key=lambda j: len(self.groups[j].running) + self._joining(j))
                self.queue.popleft()
        return entries, ids

    def _joining(self, j: int) -> int:
        """Sequences of group ``j`` whose first token is still in the pipeline."""
        return sum(1 for s in self.seqs if s.group == j and s.prefilled == s.req.prompt_tokens and not s.tokens)

    def _tokens_back(self, g: _Group) -> float:
        """Take group ``g``'s sampled tokens from the last stage; returns when they were there."""
        ring = self.st.ring
        if g.inflight is None or ring.pp == 1:  # pp 1: taken right after the step's compute
            return time.perf_counter()
        if g.posted is None:  # NCCL: posted now (see _early)
            g.posted = ring.post_recv((sum(1 for e in g.inflight if e[3]),), torch.int64, ring.pp - 1)
        toks = ring.wait(g.posted, "a step's sampled tokens", self.st.stats)
        g.posted = None
        t = time.perf_counter()
        self.st.steps[g.step]["back_t"] = t
        self._take_tokens(g, toks)
        return t

    def run(self) -> None:
        st, ring = self.st, self.st.ring
        self.t0 = time.perf_counter()
        gi, idle_round = 0, 0
        while self.finished < len(self.reqs):
            g = self.groups[gi]
            waited = g.step if g.inflight is not None else -1
            t_busy = self._tokens_back(g)
            self._arrive()
            entries, ids = self._build(g)
            if any(e[1] > 0 for e in entries):
                idle_round = 0
                out = st.compute(entries, ids)
                g.inflight = entries
                if ring.pp == 1:
                    self._take_tokens(g, out)
                else:
                    st.send_step(entries, out)
                    k = sum(1 for e in entries if e[3])
                    if _early(ring):
                        g.posted = ring.post_recv((k,), torch.int64, ring.pp - 1)
                _stamp(st.steps[-1], t_busy)
                st.steps[-1]["after"] = waited  # the step whose tokens this step waited for (-1: none)
                g.step = len(st.steps) - 1
            else:
                self.to_free = [e[0] for e in entries] + self.to_free  # nothing ran: keep the frees
                idle_round += 1
            gi = (gi + 1) % len(self.groups)
            if idle_round >= len(self.groups) and all(x.inflight is None for x in self.groups):
                idle_round = 0
                if self.next_arrival < len(self.reqs):
                    time.sleep(max(0.0, self.reqs[self.next_arrival].arrival_s - self.now()))
        if ring.pp > 1:
            st.send_stop()

    def timeline(self) -> list[dict[str, Any]]:
        return [
            {
                "index": s.req.index,
                "arrival_s": s.req.arrival_s,
                "admitted_s": s.admitted_s,
                "prompt_tokens": s.req.prompt_tokens,
                "output_tokens": s.req.output_tokens,
                "token_times_s": s.times,
                "tokens": s.tokens,
            }
            for s in self.seqs
        ]


def serve(rt: Any, ring: Ring, spec: RunSpec, load: LoadSpec) -> dict[str, Any]:
    """Serve ``load`` on this rank (see the module docstring); returns this rank's measurements:
    ``steps`` (per step: entries, decode entries, prefill tokens, compute seconds), ``wait_s``,
    ``bytes_sent``, on stage 0 the request ``timeline`` and on the last stage the sampled ``logits``
    and ``tokens`` per request."""
    st = _Stage(rt, ring, spec)
    out: dict[str, Any] = {}
    t_start = time.perf_counter()
    if rt.is_first:
        sch = _Scheduler(st, load, int(rt.hf_config.vocab_size))
        sch.run()
        out["timeline"] = sch.timeline()
    else:
        # a stage waits for the next step as long as the stream may stay quiet, plus the usual limit
        idle_s = spec.timeout_s + max((r.arrival_s for r in requests_of(load)), default=0.0)
        while (step := st.recv_step(idle_s)) is not None:
            t_busy = time.perf_counter()
            entries, h = step
            y = st.compute(entries, h)
            if rt.is_last:
                ring.send(y, 0, st.stats)
            else:
                st.send_step(entries, y)
            _stamp(st.steps[-1], t_busy)
        if not rt.is_last:
            st.send_stop()
    ring.flush()
    out.update(
        steps=st.steps,
        wait_s=st.stats.wait_s,
        bytes_sent=st.stats.bytes_sent,
        send_s=st.stats.send_s,
        wall_s=time.perf_counter() - t_start,
    )
    if rt.is_last:
        out["logits"] = {k: torch.stack(v) for k, v in st.logits.items()}
    return out

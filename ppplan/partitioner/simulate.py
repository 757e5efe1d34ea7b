"""A discrete-event simulation of one replica under Poisson load, to check :func:`load.closed_form`.

It runs the engine model of :mod:`partitioner.load` cycle by cycle, with every slot's work exact:
decodes spread over min(M, running) micro-batches as evenly as integers allow, prefill packed first
come first served into the slots in order (each slot holds at most ``token_budget`` tokens), a slot
costing fixed + per_seq·decodes + per_token·prefill, a cycle max(Σ slots, PP × the longest slot)
and a prompt's first token leaving Σ_{i≤j} slotᵢ + (PP − 1)·max_{i≤j} slotᵢ after the cycle starts
(j its last chunk's slot). Stretches of identical decode-only cycles are skipped in one step (until
the next completion or the next arrival that can be admitted), so a run costs a few events per
request, not one loop per token: milliseconds for a few thousand requests in pure Python.

The first and last 10 % of requests (warm-up, drain) are left out of the statistics; time averages
(running sequences, utilisation) cover the time between the arrivals of the first and last counted.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field

from ppplan.partitioner.load import LoadPrediction, ReplicaCost, idle_ttft
from ppplan.partitioner.workload import Workload

__all__ = ["simulate"]

TRIM = 0.1
"""Share of requests left out of the statistics at each end (warm-up and drain)."""
BACKLOG = 0.05
"""Unstable when, at the last arrival, more than this share of all requests (and ≥ 20) still waits
for its first prefill chunk: a stable queue stays short, an overloaded one grows with the run."""


@dataclass(slots=True)
class _Prompt:
    req: int
    left: int


@dataclass(slots=True)
class _Run:
    """Mutable state of one run."""

    cost: ReplicaCost
    arrivals: list[float]
    prompts: list[int]
    outputs: list[int]
    t: float = 0.0
    next_arrival: int = 0
    cycles: int = 0  # decode cycles so far: every decoding sequence has had this many tokens since joining
    waiting: deque[int] = field(default_factory=deque)  # arrived, no seat yet
    prefill: deque[_Prompt] = field(default_factory=deque)  # seated, prompt not finished
    decoding: list[tuple[int, int]] = field(default_factory=list)  # heap of (finishing cycle, request)
    first_token: list[float] = field(default_factory=list)
    finished: list[float] = field(default_factory=list)
    started: list[float] = field(default_factory=list)  # first prefill chunk scheduled
    window: tuple[float, float] = (0.0, math.inf)  # the statistics' time window
    seat_time: float = 0.0  # ∫ seated sequences dt over the window
    prefill_time: float = 0.0  # time in cycles that carry prefill, in the window
    backlog_at_last_arrival: int = -1


def _slot_decodes(cost: ReplicaCost, decodes: int) -> list[int]:
    nd = min(cost.micro_batches, decodes)
    if nd == 0:
        return []
    q, rem = divmod(decodes, nd)
    return [q + 1] * rem + [q] * (nd - rem)


def _decode_cycle(cost: ReplicaCost, decodes: int) -> float:
    dec = _slot_decodes(cost, decodes)
    taus = [cost.stage_fixed_s + cost.stage_per_seq_s * d for d in dec]
    return max(math.fsum(taus), cost.pp * max(taus))


def _pack(run: _Run, decodes: int) -> tuple[list[float], list[tuple[int, int]]]:
    """Slot times of one cycle and (request, slot of its last chunk) of the prompts it finishes."""
    cost, budget = run.cost, run.cost.token_budget
    dec = _slot_decodes(cost, decodes)
    nslots = cost.prefill_slots
    used = dec + [0] * (nslots - len(dec))  # tokens in each slot
    done: list[tuple[int, int]] = []
    slot = 0
    for pr in run.prefill:
        while slot < nslots and used[slot] >= budget:
            slot += 1
        if slot >= nslots:
            break
        if run.started[pr.req] < 0:
            run.started[pr.req] = run.t
        while True:
            take = min(budget - used[slot], pr.left)
            used[slot] += take
            pr.left -= take
            if pr.left == 0:
                done.append((pr.req, slot))
            if pr.left == 0 or not cost.chunked_pp:  # without chunked PP: one chunk in flight per prompt
                break
            slot += 1
            if slot >= nslots:
                break
    fixed, ps, pt = cost.stage_fixed_s, cost.stage_per_seq_s, cost.stage_per_prefill_token_s
    taus = []
    for i in range(nslots):
        d = dec[i] if i < len(dec) else 0
        if used[i] > 0:
            taus.append(fixed + ps * d + pt * (used[i] - d))
    return taus, done


def _admit(run: _Run) -> None:
    """Arrivals up to now join the waiting queue; seats go to the waiting in order."""
    n = len(run.arrivals)
    while run.next_arrival < n and run.arrivals[run.next_arrival] <= run.t:
        run.waiting.append(run.next_arrival)
        run.next_arrival += 1
    seats = run.cost.seats
    while run.waiting and len(run.decoding) + len(run.prefill) < seats:
        req = run.waiting.popleft()
        run.prefill.append(_Prompt(req, run.prompts[req]))
    if run.next_arrival == n and run.backlog_at_last_arrival < 0:
        run.backlog_at_last_arrival = len(run.waiting) + sum(1 for p in run.prefill if run.started[p.req] < 0)


def _account(run: _Run, dt: float, seated: int, *, prefill: bool) -> None:
    """Add the part of the next ``dt`` seconds inside the statistics' window."""
    lo, hi = run.window
    overlap = min(run.t + dt, hi) - max(run.t, lo)
    if overlap > 0:
        run.seat_time += seated * overlap
        run.prefill_time += overlap if prefill else 0.0


def _finish_decodes(run: _Run) -> None:
    while run.decoding and run.decoding[0][0] <= run.cycles:
        _, req = heapq.heappop(run.decoding)
        run.finished[req] = run.t


def _prefill_cycle(run: _Run) -> None:
    cost = run.cost
    s = len(run.decoding)
    taus, done = _pack(run, s)
    cycle = max(math.fsum(taus), cost.pp * max(taus))
    for req, j in done:
        run.first_token[req] = run.t + math.fsum(taus[: j + 1]) + (cost.pp - 1) * max(taus[: j + 1])
    _account(run, cycle, s + len(run.prefill), prefill=True)
    if done:  # without chunked PP a later prompt may finish before an earlier one
        run.prefill = deque(p for p in run.prefill if p.left > 0)
    run.t += cycle
    if s:
        run.cycles += 1
    for req, _ in done:
        extra = run.outputs[req] - 1
        if extra == 0:
            run.finished[req] = run.first_token[req]
        else:
            heapq.heappush(run.decoding, (run.cycles + extra, req))
    _finish_decodes(run)


def _decode_stretch(run: _Run) -> None:
    """Identical decode-only cycles up to the next completion or admissible arrival."""
    s = len(run.decoding)
    cycle = _decode_cycle(run.cost, s)
    n = run.decoding[0][0] - run.cycles
    if run.next_arrival < len(run.arrivals) and s < run.cost.seats:
        n = min(n, max(1, math.ceil((run.arrivals[run.next_arrival] - run.t) / cycle)))
    _account(run, n * cycle, s, prefill=False)
    run.t += n * cycle
    run.cycles += n
    _finish_decodes(run)


def _run(run: _Run) -> None:
    n = len(run.arrivals)
    while run.next_arrival < n or run.waiting or run.prefill or run.decoding:
        _admit(run)
        if run.prefill:
            _prefill_cycle(run)
        elif run.decoding:
            _decode_stretch(run)
        elif run.next_arrival < n:
            run.t = max(run.t, run.arrivals[run.next_arrival])


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    pos = q * (len(s) - 1)
    i = int(pos)
    return s[i] if i + 1 >= len(s) else s[i] + (s[i + 1] - s[i]) * (pos - i)


def simulate(
    cost: ReplicaCost, workload: Workload, rate: float, *, requests: int = 2000, seed: int = 0
) -> LoadPrediction:
    """Measured TTFT (mean, p50, p90), TPOT and load of one replica at ``rate`` requests/s (Poisson).

    ``requests`` arrivals with lengths drawn from ``workload`` (seeded); the statistics cover the
    middle 80 % of them. Latencies are inf when the run is judged unstable (see ``BACKLOG``).
    """
    if not rate > 0 or requests < 10:
        raise ValueError(f"simulate needs rate > 0 and requests >= 10, got {rate!r}, {requests!r}")
    rng = random.Random(seed)
    prompts = workload.prompt.sample(rng, requests)
    outputs = workload.output.sample(rng, requests)
    t, arrivals = 0.0, []
    for _ in range(requests):
        t += rng.expovariate(rate)
        arrivals.append(t)
    lo, hi = int(requests * TRIM), requests - int(requests * TRIM)
    run = _Run(cost=cost, arrivals=arrivals, prompts=prompts, outputs=outputs, window=(arrivals[lo], arrivals[hi - 1]))
    run.first_token = [math.nan] * requests
    run.finished = [math.nan] * requests
    run.started = [-1.0] * requests
    _run(run)
    ttft = [run.first_token[i] - arrivals[i] for i in range(lo, hi)]
    tpot = [(run.finished[i] - run.first_token[i]) / (outputs[i] - 1) for i in range(lo, hi) if outputs[i] > 1]
    span = run.window[1] - run.window[0]
    util = max(run.prefill_time / span, run.seat_time / span / cost.seats)
    stable = run.backlog_at_last_arrival <= max(20, BACKLOG * requests)
    idle = idle_ttft(cost, workload.prompt.mean)
    inf = math.inf
    return LoadPrediction(
        rate=rate,
        ttft_idle_s=idle,
        ttft_mean_s=math.fsum(ttft) / len(ttft) if stable else inf,
        ttft_p50_s=_quantile(ttft, 0.5) if stable else inf,
        ttft_p90_s=_quantile(ttft, 0.9) if stable else inf,
        tpot_s=(math.fsum(tpot) / len(tpot) if tpot else _decode_cycle(cost, 1)) if stable else inf,
        running_mean=run.seat_time / span,
        utilisation=util,
        stable=stable,
    )

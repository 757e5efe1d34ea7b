"""TTFT and TPOT of one replica under Poisson load: the engine model and a closed-form queueing model.

Engine model (also run exactly by :mod:`partitioner.simulate`). A replica runs cycles of K = max(M, PP)
stage slots; a slot is one micro-batch (one engine scheduler step) at the slowest stage. Every decoding
sequence gets one token per cycle, the decodes spread over min(M, running) micro-batches. A micro-batch
holds at most ``token_budget`` tokens (vLLM ``--max-num-batched-tokens``, SGLang ``--chunked-prefill-size``
bound each scheduled batch; with PP one is scheduled per micro-batch in flight); prefill fills the room
first come first served, slot by slot, a prompt split into chunks. With ``chunked_pp`` (SGLang chunked
pipeline parallelism) a prompt's chunks fill consecutive slots, bubble slots included, and pipeline;
without it a prompt has one chunk in flight (vLLM does not reschedule a request whose batch is in
flight): one chunk per cycle. ``max_seqs`` (and M × token_budget) caps decoding plus prefilling
sequences; further arrivals wait. A slot lasts τ = fixed + per_seq·decodes + per_token·prefill; a cycle
max(Σ τ, PP·max τ) (the slowest stage serves every slot; a micro-batch's round trip is PP slots); a prompt
whose last chunk is in slot j emits its first token Σ_{i≤j} τᵢ + (PP − 1)·max_{i≤j} τᵢ after the cycle
starts (a flow shop of PP equal stages). So on an idle replica (:func:`idle_ttft`), chunks cᵢ ≤ budget:
chunked PP: TTFT = Σ stage(cᵢ) + (PP − 1)·max stage(cᵢ) ≈ (chunks + PP − 1) × chunk stage time; without:
TTFT = PP·Σ stage(cᵢ) = chunks × PP × chunk stage time; stage(c) = fixed + per_token·c.

Closed form (:func:`closed_form`), its approximations:
1. Prefill cycles. A cycle carries prefill when a prompt piece (a prompt with chunked PP, else a chunk)
   waits at its start, and then takes all waiting: those that arrived during the previous cycle, which
   carried prefill with probability 1 − e^(−λkT_p). So N = λkT_p + e^(−λkT_p)·λT_d/(1 − e^(−λT_d))
   pieces per prefill cycle (k pieces per prompt), T_p = cycle(N pieces), ρ = λkT_p/N the share of time
   in prefill cycles; at most the room of every slot.
2. TPOT. A decoding sequence sees itself and s̄ = λ·E[O − 1]·TPOT others (Little; the decode
   population is Poisson), more during prefill busy periods: decoders join as prompts finish and leave
   only as cycles pass; at a random time of an M/G/1 busy period E[S²]/(2E[S](1 − ρ)²) of it has passed,
   λ/ρ prompts finishing per second of it. TPOT = decode-weighted mean cycle, a fixed point in TPOT.
3. Wait for prefill: the rest of the cycle in progress (size-biased) or, when the queue overflows the
   room, M/G/1 (chunked PP) or M/G/c with c = M (one chunk per prompt per cycle) on the room,
   Pollaczek–Khinchine / Allen–Cunneen: W = C(c, a)/(cμ − λ)·(1 + C²ₛ)/2, C²ₛ = (sd/mean)² of the prompt.
   Seats: M/G/c with c = seats, holding time prefill + (O − 1)·TPOT (Erlang C taken as 0 below half load
   with c > 16, where it is < 1e-3). Own prefill: its slots' share of its cycles with the others waiting.
4. p50/p90: TTFT = W + L(P), W = 0 with probability 1 − π, else exponential (mean W̄/π, π the probability
   of waiting; exact for M/M/1), P over ``TokenDist.points`` (equally likely); quantiles solved exactly.
5. Stable while the prefill cycles, the prefill servers and the seats keep up (utilisation < FULL).
Limits (benchmarks/bench_queueing.py): p90 TTFT runs ~10 % low; with few seats near saturation the seat
wait is overestimated; without chunked PP, prompts of many chunks at high load fragment the room (a
metastable queue in the simulator) and the capacity is overestimated; in ~2 % of random replicas TPOT
dips by up to ~1 % as the rate grows, and a stable rate can sit just past ``max_rate``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ppplan.partitioner.workload import Workload

__all__ = ["LoadPrediction", "ReplicaCost", "closed_form", "idle_ttft", "max_rate"]

INF = math.inf
FULL = 1.0 - 1e-4
"""Utilisation from which a replica counts as saturated (queues there already take hours to drain)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaCost:
    """How one replica's engine steps cost (seconds), linear in its work, from the cost model."""

    pp: int  # pipeline stages
    micro_batches: int  # M micro-batches in flight (a cycle of the replica = max(M, PP) stage slots)
    stage_fixed_s: float  # slowest stage, one micro-batch step with no work (weights, launches, send latency)
    stage_per_seq_s: float  # + per decode sequence in the micro-batch
    stage_per_prefill_token_s: float  # + per prefill token in the micro-batch's chunk
    token_budget: int  # tokens per engine step = per micro-batch (vLLM --max-num-batched-tokens)
    max_seqs: int  # running sequences per replica (vLLM --max-num-seqs)
    chunked_pp: bool = True  # prefill chunks of one prompt pipeline across stages (SGLang chunked PP)

    def __post_init__(self) -> None:
        if min(self.pp, self.micro_batches, self.token_budget, self.max_seqs) < 1:
            raise ValueError(f"ReplicaCost needs pp, micro_batches, token_budget, max_seqs >= 1: {self}")
        costs = (self.stage_fixed_s, self.stage_per_seq_s, self.stage_per_prefill_token_s)
        if not all(math.isfinite(c) and c >= 0 for c in costs) or self.stage_fixed_s + self.stage_per_seq_s <= 0:
            raise ValueError(f"ReplicaCost stage costs must be finite, >= 0, a decode step > 0: {self}")

    @property
    def prefill_slots(self) -> int:
        """Slots per cycle that may carry prefill: all max(M, PP) with chunked PP, else the M micro-batches."""
        return max(self.micro_batches, self.pp) if self.chunked_pp else self.micro_batches

    @property
    def seats(self) -> int:
        """Sequences admitted at once: ``max_seqs``, at most M × token_budget (each decodes every cycle)."""
        return min(self.max_seqs, self.micro_batches * self.token_budget)


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadPrediction:
    """Latencies of one replica at a Poisson request rate (seconds)."""

    rate: float  # requests/s per replica
    ttft_idle_s: float  # TTFT of a mean-length prompt on an idle replica
    ttft_mean_s: float
    ttft_p50_s: float
    ttft_p90_s: float
    tpot_s: float  # mean time per output token under this load
    running_mean: float  # mean admitted sequences (decoding or in prefill)
    utilisation: float  # share of the capacity in use: the most loaded of prefill cycles, prefill servers, seats
    stable: bool  # False when the rate exceeds what the replica sustains (then latencies are inf)


def _cycle(cost: ReplicaCost, decodes: float, prefill: float) -> tuple[float, float]:
    """(seconds, d seconds / d prefill) of a cycle with ``decodes`` sequences over min(M, decodes) slots
    and ``prefill`` tokens filling the slots' room in order (continuous amounts)."""
    budget, fixed, per_tok = cost.token_budget, cost.stage_fixed_s, cost.stage_per_prefill_token_s
    nd = max(1.0, min(float(cost.micro_batches), decodes))
    per_slot = decodes / nd
    room = max(budget - per_slot, 0.0)
    spill = prefill - room * nd  # past the decode slots' room: slots of a whole budget
    total = (nd + max(0.0, spill) / budget) * fixed + cost.stage_per_seq_s * decodes + per_tok * prefill
    d_total = per_tok + (fixed / budget if spill > 0 else 0.0)
    head = fixed + cost.stage_per_seq_s * per_slot
    longest, d_longest = (head + per_tok * prefill, per_tok) if prefill < room else (head + per_tok * room, 0.0)
    if spill > 0 and fixed + per_tok * min(spill, budget) > longest:
        longest, d_longest = fixed + per_tok * min(spill, budget), (per_tok if spill < budget else 0.0)
    return (total, d_total) if total >= cost.pp * longest else (cost.pp * longest, cost.pp * d_longest)


def _t(cost: ReplicaCost, decodes: float, prefill: float) -> float:
    return _cycle(cost, decodes, prefill)[0]


def idle_ttft(cost: ReplicaCost, prompt_tokens: float) -> float:
    """Seconds from arrival to the first token of a ``prompt_tokens`` prompt on an idle replica."""
    full, rest = divmod(max(float(prompt_tokens), 1.0), cost.token_budget)
    chunks = [float(cost.token_budget)] * int(full) + ([rest] if rest > 0 else [])
    stage = [cost.stage_fixed_s + cost.stage_per_prefill_token_s * c for c in chunks]
    if cost.chunked_pp:  # a flow shop of identical stages: makespan = Σ + (PP − 1) × the longest chunk
        return math.fsum(stage) + (cost.pp - 1) * max(stage)
    return cost.pp * math.fsum(stage)


@dataclass(frozen=True, slots=True)
class _State:
    tpot: float
    decodes: float  # mean decoding sequences (time average)
    room: float  # prefill tokens a cycle holds besides the decodes
    prefill_cycle: float  # seconds of a cycle that carries prefill
    pieces: float  # prompt pieces such a cycle carries
    rho: float  # share of time in such cycles; past saturation, how far past (for max_rate)
    decode_cycle: float  # seconds of a decode-only cycle
    units: float = 1.0  # pieces per prompt (its chunks without chunked PP)


def _root(f: Callable[[float], float], lo: float, hi: float, flo: float, fhi: float, rtol: float) -> float:
    """Root of an increasing ``f``, f(lo) < 0 < f(hi), by the Illinois method (regula falsi halving a
    stale end): superlinear, never leaves the bracket."""
    side, x = 0, lo
    for _ in range(100):
        x = (lo * fhi - hi * flo) / (fhi - flo)
        fx = f(x)
        if fx == 0 or hi - lo <= rtol * abs(hi):
            break
        if fx > 0:
            hi, fhi, flo, side = x, fx, (flo / 2 if side == 1 else flo), 1
        else:
            lo, flo, fhi, side = x, fx, (fhi / 2 if side == -1 else fhi), -1
    return x


def _prefill(
    cost: ReplicaCost, rate: float, piece: float, lam: float, decodes: float, room: float
) -> tuple[float, ...]:
    """(ρ, N, T_p) of the cycles that carry prefill (assumption 1), ``lam`` pieces of ``piece`` tokens
    per second; Newton on N − Φ(N) (Φ increasing, piecewise smooth, Φ' < 1 at the root)."""
    ltd = rate * _t(cost, decodes, 0.0)
    after_decode = ltd / -math.expm1(-ltd) if ltd > 1e-12 else 1.0
    top, n = room / piece, 1.0
    for _ in range(30):
        tok = min(n * piece, room)
        t, dt = _cycle(cost, decodes, tok)
        e = math.exp(-lam * t) * after_decode
        slope = 1.0 - lam * dt * piece * (1.0 - e) if tok < room else 1.0
        new = n - (n - lam * t - e) / slope if slope > 1e-9 else INF
        if not new < top:  # the cycles may fill up: then each carries the room
            t = _t(cost, decodes, room)
            if top - lam * t - math.exp(-lam * t) * after_decode <= 0:
                return lam * piece * t / room, top, t
            new = 0.5 * (n + top)
        new = max(new, 1.0)
        if abs(new - n) <= 1e-5 * n:
            n = new
            break
        n = new
    tp = _t(cost, decodes, min(n * piece, room))
    return lam * tp / n, n, tp


def _decode_view(cost: ReplicaCost, wl: Workload, rate: float, x: float) -> tuple[float, _State]:
    """The TPOT implied when TPOT is ``x`` (assumptions 1 and 2), and the state behind it."""
    o1 = max(wl.output.mean - 1.0, 0.0)
    decodes = rate * o1 * x
    room = cost.prefill_slots * cost.token_budget - decodes - 1.0
    if room <= 0:
        return INF, _State(INF, decodes, 0.0, INF, 0.0, INF, INF)
    seen = decodes + 1.0  # a decoding sequence sees itself and s̄ others
    units = 1.0
    if not cost.chunked_pp:  # chunks of a micro-batch's room, one per cycle
        r = max(cost.token_budget - decodes / max(1.0, min(float(cost.micro_batches), decodes)), 1.0)
        units = math.fsum(max(1.0, p / r) for p in wl.prompt.points()) / len(wl.prompt.points())
    piece = wl.prompt.mean / units
    rho, n, tp = _prefill(cost, rate, piece, rate * units, seen, room)
    # the M micro-batches serve prompts side by side without chunked PP: the busy period is per server
    busy = rho if cost.chunked_pp else rate * units * tp / cost.micro_batches
    if not max(rho, busy) < 1.0:
        return INF, _State(INF, decodes, room, tp, n, max(rho, busy), INF, units)
    extra = min(
        (1.0 + wl.prompt.cv2) / (2.0 * (1.0 - busy) ** 2), decodes / max(rho, 1e-12), rate * o1 * tp / max(rho, 1e-12)
    )
    in_prefill, in_decode = seen + (1.0 - rho) * extra, seen - rho * extra
    tp, td = _t(cost, in_prefill, min(n * piece, room)), _t(cost, in_decode, 0.0)
    tpot = (rho * in_prefill + (1.0 - rho) * in_decode) / (rho * in_prefill / tp + (1.0 - rho) * in_decode / td)
    return tpot, _State(tpot, decodes, room, tp, n, rho, td, units)


def _state(cost: ReplicaCost, wl: Workload, rate: float) -> _State:
    """The smallest fixed point TPOT = f(TPOT), by the secant method from below (a fixed-point step
    where it finds no root ahead, regula falsi once bracketed); tpot inf when there is none before
    the decodes fill the seats."""
    o1 = max(wl.output.mean - 1.0, 0.0)
    f0, st = _decode_view(cost, wl, rate, 0.0)
    if o1 == 0 or not math.isfinite(f0):
        return st
    x_max = cost.seats / (rate * o1)
    lo, glo, hi, ghi, x0, g0 = 0.0, f0, x_max, INF, 0.0, f0  # the gap at x_max is computed when needed
    x = f0
    for _ in range(60):
        if x >= hi:  # the gap's sign at hi is still unknown
            f_hi, st_hi = _decode_view(cost, wl, rate, hi) if hi == x_max else (INF, st)
            if (f_hi < INF and f_hi > hi) or (f_hi == INF and lo + glo >= hi):  # no root below hi
                rho = max(f_hi / hi if f_hi < INF else st_hi.rho, st_hi.rho, 1.0)
                return _State(INF, INF, 0.0, INF, 0.0, rho, INF)
            if f_hi == INF:  # saturated at hi: a fixed-point step from below, which cannot pass a root
                hi, x = min(hi, x), lo + glo
                continue
            ghi = f_hi - hi
            x = (lo * ghi - hi * glo) / (ghi - glo)
        f, st = _decode_view(cost, wl, rate, x)
        if not f < INF:  # the prefill saturates at these decodes, so any root is below
            hi, ghi, x = x, INF, lo + glo
            continue
        g = f - x
        if abs(g) <= 1e-5 * x or hi - lo <= 1e-9 * hi:
            break
        lo, glo, hi, ghi = (x, g, hi, ghi) if g > 0 else (lo, glo, x, g)
        nx = x - g * (x - x0) / (g - g0) if g != g0 else -INF
        x0, g0 = x, g
        if math.isfinite(ghi) and not lo < nx < hi:
            nx = (lo * ghi - hi * glo) / (ghi - glo)
        elif nx <= lo:  # no secant root ahead: a fixed-point step, which cannot pass the smallest root
            nx = f
        x = min(nx, hi)  # a secant from below undershoots a convex gap: a root past hi means none
    return st


def _own_prefill(cost: ReplicaCost, wl: Workload, st: _State) -> list[float]:
    """Seconds from the start of a request's first prefill cycle to its first token, per point of its
    prompt length. The cycle also carries N_b − 1 other pieces (N_b size-biased, N − 1 taken as
    Poisson), half of them ahead of it."""
    nd = max(1.0, min(float(cost.micro_batches), st.decodes))
    r = max(cost.token_budget - st.decodes / nd, 1.0)
    fixed = cost.stage_fixed_s + cost.stage_per_seq_s * st.decodes / nd
    mu = max(st.pieces - 1.0, 0.0)
    others = (mu + mu / (1.0 + mu)) * wl.prompt.mean / st.units
    out = []
    for p in wl.prompt.points():
        first = min(p, st.room)
        if cost.chunked_pp:  # (slots up to its last token + PP − 1) × slot; beyond the room, whole cycles
            content = min(st.room, first + others)
            tau = fixed + cost.stage_per_prefill_token_s * content / max(1.0, content / r)
            beyond = max(0.0, p - st.room) / st.room * st.prefill_cycle
            out.append((max(1.0, (first + others / 2) / r) + cost.pp - 1) * tau + beyond)
        else:  # one chunk (at most r tokens) per cycle
            out.append(max(1.0, p / r) * _t(cost, st.decodes, min(st.room, min(p, r) + others)))
    return out


def _wait(c: int, rate: float, hold: float, cv2: float) -> tuple[float, float]:
    """(mean wait, probability of waiting) of M/G/c by Allen–Cunneen with Erlang C; (inf, 1) when saturated."""
    a = rate * hold
    if a >= c:
        return INF, 1.0
    if c > 16 and a < 0.5 * c:
        return 0.0, 0.0
    b = 1.0  # Erlang B by its recursion, then Erlang C
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    pw = a if c == 1 else b / (1.0 - a / c + a / c * b)
    return pw * hold / (c - a) * (1.0 + cv2) / 2.0, pw


def _mixture_quantile(q: float, own: list[float], pw: float, theta: float) -> float:
    """q-quantile of W + L: W = 0 with probability 1 − pw, else exponential of mean ``theta``; L equally
    likely over ``own``. Between two points the distribution function is
    (i + 1 − pw·Σ_{j≤i} e^((x_j − t)/θ)) / k, solved for t in closed form."""
    xs, k = sorted(own), len(own)
    if pw <= 1e-12 or theta <= 0:
        return xs[min(k - 1, math.ceil(q * k - 1e-9) - 1)]
    acc = 0.0  # Σ_{j≤i} e^((x_j − x_i)/θ)
    for i, x in enumerate(xs):
        acc = (acc * math.exp((xs[i - 1] - x) / theta) if i else 0.0) + 1.0
        if (i + 1 - pw * acc) / k >= q:  # on the atom at x
            return x
        head = i + 1 - q * k
        if head > 0:
            t = x + theta * math.log(pw * acc / head)
            if i + 1 == k or t < xs[i + 1]:
                return t
    return INF  # unreachable for q < 1


@dataclass(frozen=True, slots=True)
class _Queues:
    state: _State
    own: list[float]
    wait: float  # for prefill to start
    hold: float  # seconds a request holds its seat
    utilisation: float


def _queues(cost: ReplicaCost, wl: Workload, rate: float, st: _State | None = None) -> _Queues | None:
    """The prefill queue and the seats at ``rate`` (assumption 3); None when something saturates."""
    st = st or _state(cost, wl, rate)
    if not (st.rho < 1.0 and math.isfinite(st.tpot)):
        return None
    if cost.chunked_pp:  # one server: the room at a full cycle's pace
        servers, service = 1, wl.prompt.mean * _t(cost, st.decodes, st.room) / st.room
    else:  # M servers: a prompt holds a micro-batch's room for its chunks' cycles
        servers, service = cost.micro_batches, st.units * st.prefill_cycle
    w_fluid, _ = _wait(servers, rate, service, wl.prompt.cv2)
    mu = max(st.pieces - 1.0, 0.0)
    biased = _t(cost, st.decodes, min(st.room, (1.0 + mu + mu / (1.0 + mu)) * wl.prompt.mean / st.units))
    residual = (st.rho * biased + (1.0 - st.rho) * -math.expm1(-st.decodes) * st.decode_cycle) / 2
    own = _own_prefill(cost, wl, st)
    wait = max(residual, w_fluid)  # the fluid wait already holds the rest of the cycle in service
    hold = wait + math.fsum(own) / len(own) + max(wl.output.mean - 1.0, 0.0) * st.tpot
    util = max(st.rho, rate * service / servers, rate * hold / cost.seats)
    return _Queues(st, own, wait, hold, util) if math.isfinite(w_fluid) else None


def closed_form(cost: ReplicaCost, workload: Workload, rate: float) -> LoadPrediction:
    """TTFT (mean, p50, p90) and TPOT of one replica at ``rate`` requests/s (Poisson), seconds: the
    queueing approximation of the module docstring (about a hundred microseconds)."""
    wl = workload
    idle = idle_ttft(cost, wl.prompt.mean)
    if not rate > 0:
        own = [idle_ttft(cost, p) for p in wl.prompt.points()]
        p50, p90 = (_mixture_quantile(q, own, 0.0, 0.0) for q in (0.5, 0.9))
        tpot = _t(cost, 1.0, 0.0)
        return LoadPrediction(
            rate=0.0, ttft_idle_s=idle, ttft_mean_s=math.fsum(own) / len(own), ttft_p50_s=p50, ttft_p90_s=p90,
            tpot_s=tpot, running_mean=0.0, utilisation=0.0, stable=True,
        )  # fmt: skip
    qs = _queues(cost, wl, rate)
    if qs is None or not qs.utilisation < FULL:
        util = qs.utilisation if qs else 1.0
        return LoadPrediction(
            rate=rate, ttft_idle_s=idle, ttft_mean_s=INF, ttft_p50_s=INF, ttft_p90_s=INF, tpot_s=INF,
            running_mean=INF, utilisation=util, stable=False,
        )  # fmt: skip
    st = qs.state
    w_seat, pw_seat = _wait(cost.seats, rate, qs.hold, (wl.output.sd * st.tpot / qs.hold) ** 2)
    wait = qs.wait + w_seat
    pw = min(1.0, max(st.rho, pw_seat)) if wait > 0 else 0.0  # waits: arrived in a prefill cycle or no seat
    theta = wait / pw if pw > 0 else 0.0
    return LoadPrediction(
        rate=rate, ttft_idle_s=idle, ttft_mean_s=wait + math.fsum(qs.own) / len(qs.own),
        ttft_p50_s=_mixture_quantile(0.5, qs.own, pw, theta), ttft_p90_s=_mixture_quantile(0.9, qs.own, pw, theta),
        tpot_s=st.tpot, running_mean=rate * qs.hold, utilisation=qs.utilisation, stable=True,
    )  # fmt: skip


def max_rate(cost: ReplicaCost, workload: Workload) -> float:
    """Requests/s per replica the replica sustains: where its utilisation reaches 1 (to 1e-3)."""
    wl = workload
    o1 = max(wl.output.mean - 1.0, 0.0)
    work = cost.stage_per_seq_s * o1 + cost.stage_per_prefill_token_s * wl.prompt.mean
    floor = cost.stage_fixed_s * cost.pp * o1 / cost.seats  # a cycle lasts ≥ PP × fixed; one token per seat

    def excess(rate: float) -> float:
        """Utilisation − 1; past saturation, how far past (continuous through 0: a fast root)."""
        st = _state(cost, wl, rate)
        qs = _queues(cost, wl, rate, st) if st.rho < 1.0 and math.isfinite(st.tpot) else None
        if qs is None:
            return min(max(st.rho, 1.0 + 1e-9), 4.0) - FULL
        return min(qs.utilisation, 4.0) - FULL

    hi = 1.0 / max(work + floor, 1e-300)
    f_hi = excess(hi)
    while f_hi < 0:  # not an upper bound after all
        hi *= 2.0
        f_hi = excess(hi)
    rate = _root(excess, 0.0, hi, -1.0, f_hi, 1e-3)
    while excess(rate) >= 0:
        rate *= 1.0 - 1e-3
    return rate

"""TTFT and TPOT of one replica under Poisson load: the engine model and its closed-form queueing model.

Engine model (shared with the simulator, :mod:`partitioner.simulate`)
---------------------------------------------------------------------
A replica runs *cycles*. A cycle has K = max(M, PP) stage slots; each slot is one micro-batch (one
engine scheduler step) passing the slowest stage. Every decoding sequence gets one token per cycle,
the decodes spread over min(M, running) micro-batches. Each micro-batch holds at most ``token_budget``
tokens (vLLM ``--max-num-batched-tokens`` and SGLang ``--chunked-prefill-size`` bound each scheduled
batch, and with PP one batch is scheduled per micro-batch in flight); the room the decodes leave is
filled with prefill chunks, first come first served, a prompt split over as many chunks as needed.
With ``chunked_pp`` (SGLang's chunked pipeline parallelism) a prompt's chunks may fill every slot of
a cycle, the PP − M bubble slots included, and pipeline across the stages; without it a prompt has
one chunk in flight at a time (vLLM: a request is not rescheduled while its batch is in flight), so
its chunks advance one per cycle. ``max_seqs`` caps decoding plus prefilling sequences (further
arrivals wait), and so does M × token_budget (every running sequence decodes once per cycle).

A slot carrying d decodes and c prefill tokens lasts τ = fixed + per_seq·d + per_token·c; prefill
fills the slots in order (a micro-batch is filled to the budget before the next one), so one slot
may carry a long chunk while the others only decode. A cycle lasts max(Σ τ, PP·max τ): the slowest
stage serves every slot once, and a micro-batch cannot start its next round before its round trip
of PP slots (with equal slots: max(n, PP)·τ). A prompt whose last chunk is in slot j emits its first
token Σ_{i≤j} τᵢ + (PP − 1)·max_{i≤j} τᵢ after the cycle starts (a flow shop of PP equal stages).
On an idle replica this gives (:func:`idle_ttft`)

    chunked_pp:  TTFT = Σᵢ stage(cᵢ) + (PP − 1)·maxᵢ stage(cᵢ)   ≈ (chunks + PP − 1) × chunk stage time
    otherwise:   TTFT = PP · Σᵢ stage(cᵢ)                       = chunks × PP × chunk stage time

for chunks cᵢ of ``token_budget`` tokens, stage(c) = fixed + per_token·c.

Closed form (:func:`closed_form`), assumptions
----------------------------------------------
1. TPOT: the mean cycle a decoding sequence sees. A decoding sequence sees itself plus, on average,
   s̄ = λ·E[O − 1]·TPOT others (Little's law; the decode population of M/G/∞ is Poisson, so a
   tagged sequence sees 1 + s̄) and p̄ = λ·E[P]·TPOT prefill tokens per cycle (the prefill stream
   spread over the cycles). TPOT = cycle(1 + s̄, p̄) is a fixed point, solved by successive linear
   solves (the cycle is linear in TPOT once the number of busy slots is fixed).
2. Prefill is a queue served FCFS at R tokens per full cycle T_R (the room left by s̄ decodes):
   with chunked PP one server (M/G/1, Pollaczek–Khinchine mean wait
   W = λ·E[S²] / (2(1 − ρ))), otherwise M servers each serving one prompt at a micro-batch's room
   per cycle (M/G/c, Allen–Cunneen: W = C(c, a) / (cμ − λ) · (1 + C²ₛ) / 2, exact PK at c = 1).
   Service S ∝ prompt length, so C²ₛ = (sd/mean)² of the prompt.
3. Seats: an arrival waits for a free seat when all ``max_seqs`` are taken; seats are an M/G/c
   queue with holding time H = prefill wait + prefill + (O − 1)·TPOT (Allen–Cunneen again; the
   Erlang C term is dropped when the seats are less than half used and there are more than 16,
   where it is below 1e-3).
4. A request's own prefill takes L(P) = (max(1, P/r) + PP − 1)·σ with chunked PP (r tokens per
   slot) and max(1, P/r)·T per cycle of its chunks otherwise; a request arriving while the replica
   decodes with no prefill waits on average half a decode cycle for the next cycle to start.
5. Distribution of TTFT (p50, p90): TTFT = A + W + L(P) with W = 0 with probability 1 − π and
   exponential with mean W̄/π otherwise (π = the Erlang C probability of waiting; exact for
   M/M/1, the usual heavy-traffic approximation for M/G/c), P over ``TokenDist.points`` (equally
   likely); the quantile of that mixture is solved numerically.
6. Stable when the prefill servers, the seats and the cycle time all keep up (utilisation < 1);
   :func:`max_rate` is the rate where the first of them saturates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ppplan.partitioner.workload import Workload

__all__ = ["LoadPrediction", "ReplicaCost", "closed_form", "cycle_time", "idle_ttft", "max_rate"]

INF = math.inf


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaCost:
    """How one replica's engine steps cost (seconds), linear in its work, from the cost model."""

    pp: int
    """pipeline stages"""
    micro_batches: int
    """M micro-batches in flight (a cycle of the replica = max(M, PP) stage slots)"""
    stage_fixed_s: float
    """slowest stage, one micro-batch step with no work (weights read, launches, send latency)"""
    stage_per_seq_s: float
    """+ per decode sequence in the micro-batch"""
    stage_per_prefill_token_s: float
    """+ per prefill token in the micro-batch's chunk"""
    token_budget: int
    """tokens (decode + prefill) per engine step = per micro-batch (vLLM --max-num-batched-tokens)"""
    max_seqs: int
    """running sequences per replica (vLLM --max-num-seqs)"""
    chunked_pp: bool = True
    """prefill chunks of one prompt pipeline across stages (SGLang chunked PP)"""

    def __post_init__(self) -> None:
        if self.pp < 1 or self.micro_batches < 1 or self.token_budget < 1 or self.max_seqs < 1:
            raise ValueError(f"ReplicaCost needs pp, micro_batches, token_budget, max_seqs >= 1: {self}")
        costs = (self.stage_fixed_s, self.stage_per_seq_s, self.stage_per_prefill_token_s)
        if not all(math.isfinite(c) and c >= 0 for c in costs) or self.stage_fixed_s + self.stage_per_seq_s <= 0:
            raise ValueError(f"ReplicaCost stage costs must be finite, >= 0, a decode step > 0: {self}")

    @property
    def slots(self) -> int:
        """K = max(M, PP) stage slots per cycle."""
        return max(self.micro_batches, self.pp)

    @property
    def prefill_slots(self) -> int:
        """Slots per cycle that may carry prefill: all K with chunked PP, else the M micro-batches."""
        return self.slots if self.chunked_pp else self.micro_batches

    @property
    def seats(self) -> int:
        """Sequences admitted at once: ``max_seqs``, at most M × token_budget (each decodes every cycle)."""
        return min(self.max_seqs, self.micro_batches * self.token_budget)


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadPrediction:
    """Latencies of one replica at a Poisson request rate (seconds)."""

    rate: float
    """requests/s per replica"""
    ttft_idle_s: float
    """TTFT of a mean-length prompt on an idle replica"""
    ttft_mean_s: float
    ttft_p50_s: float
    ttft_p90_s: float
    tpot_s: float
    """mean time per output token under this load"""
    running_mean: float
    """mean admitted sequences (decoding or in prefill)"""
    utilisation: float
    """share of the replica's capacity in use: the most loaded of cycle time, prefill and seats"""
    stable: bool
    """False when the rate exceeds what the replica sustains (then latencies are inf)"""


def cycle_time(cost: ReplicaCost, decodes: float, prefill: float) -> float:
    """Seconds of a cycle with ``decodes`` sequences and ``prefill`` tokens (continuous amounts).

    Decodes spread over min(M, decodes) slots; prefill fills the first slot's room before the next.
    """
    return _cycle(cost, decodes, prefill)[0]


def _cycle(cost: ReplicaCost, decodes: float, prefill: float) -> tuple[float, float]:
    """(cycle seconds, its derivative in the prefill tokens)."""
    budget, fixed, per_tok = cost.token_budget, cost.stage_fixed_s, cost.stage_per_prefill_token_s
    nd = max(1.0, min(float(cost.micro_batches), decodes))
    per_slot = decodes / nd
    room = max(budget - per_slot, 0.0)
    spill = prefill - room * nd  # past the decode slots' room: bubble slots of a whole budget
    busy = nd + max(0.0, spill) / budget
    total = busy * fixed + cost.stage_per_seq_s * decodes + per_tok * prefill
    d_total = per_tok + (fixed / budget if spill > 0 else 0.0)
    if prefill < room:
        longest, d_longest = fixed + cost.stage_per_seq_s * per_slot + per_tok * prefill, per_tok
    else:
        longest, d_longest = fixed + cost.stage_per_seq_s * per_slot + per_tok * room, 0.0
    if spill > 0 and fixed + per_tok * min(spill, budget) > longest:
        longest, d_longest = fixed + per_tok * min(spill, budget), (per_tok if spill < budget else 0.0)
    if total >= cost.pp * longest:
        return total, d_total
    return cost.pp * longest, cost.pp * d_longest


def idle_ttft(cost: ReplicaCost, prompt_tokens: float) -> float:
    """Seconds from arrival to the first token of a ``prompt_tokens`` prompt on an idle replica."""
    b = cost.token_budget
    full, rest = divmod(max(float(prompt_tokens), 1.0), b)
    chunks = [float(b)] * int(full) + ([rest] if rest > 0 else [])
    stage = [cost.stage_fixed_s + cost.stage_per_prefill_token_s * c for c in chunks]
    if cost.chunked_pp:  # a flow shop of identical stages: makespan = Σ + (PP − 1) × the longest chunk
        return math.fsum(stage) + (cost.pp - 1) * max(stage)
    return cost.pp * math.fsum(stage)


@dataclass(frozen=True, slots=True)
class _State:
    """The closed form's intermediate quantities at one rate."""

    tpot: float
    decodes: float  # mean decoding sequences (time average)
    room: float  # prefill tokens a cycle holds besides the decodes
    prefill_cycle: float  # seconds of a cycle that carries prefill
    prompts: float  # prompt pieces such a cycle carries (mean)
    rho: float  # share of time in cycles that carry prefill
    decode_cycle: float  # seconds of a decode-only cycle
    units: float = 1.0  # pieces per prompt a prefill cycle counts (chunks without chunked PP)


def _root(f: Callable[[float], float], lo: float, hi: float, flo: float, fhi: float, rtol: float) -> float:
    """Root of an increasing ``f`` with f(lo) < 0 < f(hi) by the Illinois method (regula falsi that
    halves a stale end's value): superlinear, never leaves the bracket."""
    side = 0
    x = lo
    for _ in range(100):
        x = (lo * fhi - hi * flo) / (fhi - flo)
        fx = f(x)
        if fx == 0 or hi - lo <= rtol * abs(hi):
            return x
        if fx > 0:
            hi, fhi = x, fx
            if side == 1:
                flo /= 2
            side = 1
        else:
            lo, flo = x, fx
            if side == -1:
                fhi /= 2
            side = -1
    return x


def _prefill(
    cost: ReplicaCost, rate: float, mean_prompt: float, decodes: float, room: float, units: float
) -> tuple[float, float, float]:
    """(ρ, N, T_p) of a cycle that carries prefill: ρ = λ·k·T_p / N is the share of time in such
    cycles, N the prompt pieces each carries (k per prompt: 1 with chunked PP, where a prompt fills
    the cycle; its chunks otherwise, one per cycle). A prefill cycle takes every piece waiting at its
    start: those that arrived during the previous cycle. The previous cycle carried prefill with
    probability 1 − e^(−λkT_p) (else it was a decode cycle of T_d), so, with Poisson arrivals,
    N = λk·T_p + e^(−λkT_p)·λT_d / (1 − e^(−λT_d)), T_p = T(N·E[P]/k); capped at the room."""
    td = cycle_time(cost, decodes, 0.0)
    ltd = rate * td
    after_decode = ltd / -math.expm1(-ltd) if ltd > 1e-12 else 1.0 + ltd / 2

    piece = mean_prompt / units
    lam = rate * units  # pieces per second
    top = room / piece
    n = 1.0
    for _ in range(30):  # Newton on n − Φ(n): Φ is increasing and piecewise smooth, Φ' < 1 at the root
        tok = min(n * piece, room)
        t, dt = _cycle(cost, decodes, tok)
        lt = lam * t
        e = math.exp(-lt) * after_decode
        g = n - lt - e
        slope = 1.0 - lam * dt * piece * (1.0 - e) if tok < room else 1.0
        step = g / slope if slope > 1e-9 else -INF
        new = n - step if step == step else n
        if new >= top or not math.isfinite(new):  # the cycles fill up: each carries the room
            t = cycle_time(cost, decodes, room)
            if top - lam * t - math.exp(-lam * t) * after_decode <= 0:
                return rate * mean_prompt * t / room, top, t
            new = 0.5 * (n + top)
        new = max(new, 1.0)
        if abs(new - n) <= 1e-6 * n:
            n = new
            break
        n = new
    tp = cycle_time(cost, decodes, min(n * piece, room))
    return lam * tp / n, n, tp


def _chunk_room(cost: ReplicaCost, decodes: float) -> float:
    """Prefill tokens one micro-batch holds beside its share of ``decodes``."""
    return max(cost.token_budget - decodes / max(1.0, min(float(cost.micro_batches), decodes)), 1.0)


def _chunks(cost: ReplicaCost, wl: Workload, decodes: float) -> float:
    """Mean chunks per prompt when each takes at most one micro-batch's room per cycle."""
    r = _chunk_room(cost, decodes)
    pts = wl.prompt.points()
    return math.fsum(max(1.0, p / r) for p in pts) / len(pts)


def _decode_view(cost: ReplicaCost, wl: Workload, rate: float, x: float) -> tuple[float, _State]:
    """TPOT implied when TPOT is ``x``, and the state behind it."""
    o1 = max(wl.output.mean - 1.0, 0.0)
    decodes = rate * o1 * x
    room = cost.prefill_slots * cost.token_budget - decodes - 1.0
    if room <= 0:
        return INF, _State(INF, decodes, 0.0, INF, 0.0, INF, INF)
    seen = decodes + 1.0  # a decoding sequence sees itself and s̄ others
    units = 1.0 if cost.chunked_pp else _chunks(cost, wl, decodes)
    rho, n, tp = _prefill(cost, rate, wl.prompt.mean, seen, room, units)
    if not rho < 1.0:
        return INF, _State(INF, decodes, room, tp, n, rho, INF, units)
    # Decoders pile up during prefill busy periods: they join as prompts finish and leave only as
    # cycles pass. At a random time in an M/G/1 busy period of service S = ρ/λ, E[B²]/(2E[B]) =
    # E[S²]/(2E[S](1 − ρ)²) of it has passed, and λ/ρ prompts finished per second of it.
    # Without chunked PP the M micro-batches serve prompts side by side: use the per-server load.
    busy = rho if cost.chunked_pp else rate * units * tp / cost.micro_batches
    if not busy < 1.0:
        return INF, _State(INF, decodes, room, tp, n, max(rho, busy), INF, units)
    extra = (1.0 + wl.prompt.cv2) / (2.0 * (1.0 - busy) ** 2)
    extra = min(extra, decodes / max(rho, 1e-12), rate * o1 * tp / max(rho, 1e-12))
    in_prefill, in_decode = seen + (1.0 - rho) * extra, seen - rho * extra
    tp = cycle_time(cost, in_prefill, min(n * wl.prompt.mean / units, room))
    td = cycle_time(cost, in_decode, 0.0)
    tokens = rho * in_prefill / tp + (1.0 - rho) * in_decode / td  # decode tokens per second
    tpot = (rho * in_prefill + (1.0 - rho) * in_decode) / tokens
    return tpot, _State(tpot, decodes, room, tp, n, rho, td, units)


def _state(cost: ReplicaCost, wl: Workload, rate: float, guess: float = 0.0) -> _State:
    """Solve TPOT = f(TPOT) by the secant method inside a bracket (regula falsi as the fallback):
    the smallest fixed point, tpot inf when there is none before the decodes fill the seats.
    ``guess``: a TPOT to start from (the solution at a nearby rate)."""
    o1 = max(wl.output.mean - 1.0, 0.0)
    f0, st = _decode_view(cost, wl, rate, 0.0)
    if o1 == 0:
        return st
    x_max = cost.seats / (rate * o1)
    lo, glo = 0.0, f0
    hi, ghi = x_max, INF  # gap unknown at x_max until needed
    x0, g0 = 0.0, f0
    x = guess if 0.0 < guess < x_max else f0
    for _ in range(40):
        if x >= hi:
            f_hi, _ = _decode_view(cost, wl, rate, x_max)
            if f_hi > x_max:  # rho carries how far past saturation (for max_rate's root finding)
                return _State(INF, INF, 0.0, INF, 0.0, max(f_hi / x_max, st.rho, 1.0), INF)
            hi, ghi = x_max, f_hi - x_max
            x = (lo * ghi - hi * glo) / (ghi - glo)
        f, st = _decode_view(cost, wl, rate, x)
        g = f - x
        if abs(g) <= 1e-7 * x:
            break
        if g > 0:
            lo, glo = x, g
        else:
            hi, ghi = x, g
        nx = x - g * (x - x0) / (g - g0) if g != g0 else INF
        x0, g0 = x, g
        if not lo < nx < hi:
            nx = (lo * ghi - hi * glo) / (ghi - glo) if math.isfinite(ghi) else min(2.0 * x, hi)
        x = nx
        if hi - lo <= 1e-12 * hi:
            break
    return st


def _own_prefill(cost: ReplicaCost, wl: Workload, st: _State) -> list[float]:
    """Seconds from the start of a request's first prefill cycle to its first token, per point of its
    prompt length. Its cycle also carries the other prompts waiting at its start: N_b − 1 of them,
    N_b the size-biased count (N − 1 taken as Poisson), half of them ahead of it."""
    nd = max(1.0, min(float(cost.micro_batches), st.decodes))
    per_slot = st.decodes / nd
    r = max(cost.token_budget - per_slot, 1.0)
    fixed = cost.stage_fixed_s + cost.stage_per_seq_s * per_slot
    mu = max(st.prompts - 1.0, 0.0)
    others = (mu + mu / (1.0 + mu)) * wl.prompt.mean / st.units
    out = []
    for p in wl.prompt.points():
        first = min(p, st.room)
        beyond = max(0.0, p - st.room) / st.room * st.prefill_cycle  # whole cycles before its last
        if cost.chunked_pp:  # slots of r tokens pipelined: (slots up to its last token + PP − 1) × slot
            content = min(st.room, first + others)
            used = max(1.0, content / r)
            tau = fixed + cost.stage_per_prefill_token_s * content / used
            out.append((max(1.0, (first + others / 2) / r) + cost.pp - 1) * tau + beyond)
        else:  # one chunk (at most r tokens) per cycle
            cycle = cycle_time(cost, st.decodes, min(st.room, min(p, r) + others))
            out.append(max(1.0, p / r) * cycle)
    return out


def _erlang_c(c: int, a: float) -> float:
    """Probability that an arrival waits in M/M/c with offered load ``a`` (Erlang C), 0 ≤ a < c."""
    if c == 1:
        return a
    if a < 0.5 * c and c > 16:
        return 0.0  # below 1e-3 here; skips an O(c) loop for large seat counts
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    rho = a / c
    return b / (1.0 - rho + rho * b)


def _wait(c: int, rate: float, hold: float, cv2: float) -> tuple[float, float]:
    """(mean wait, probability of waiting) of M/G/c by Allen–Cunneen; (inf, 1) when saturated."""
    a = rate * hold
    if a >= c:
        return INF, 1.0
    pw = _erlang_c(c, a)
    return (pw * hold / (c - a) * (1.0 + cv2) / 2.0 if pw > 0 else 0.0), pw


def _mixture_quantile(q: float, shift: float, own: list[float], pw: float, theta: float) -> float:
    """q-quantile of shift + W + L: W = 0 with probability 1 − pw, else exponential with mean
    ``theta``; L equally likely over ``own``. Exact: between two points of ``own`` the distribution
    function is (i + 1 − pw·Σ_{j≤i} e^((x_j − t)/θ)) / k, solved for t in closed form."""
    xs = sorted(own)
    k = len(xs)
    if pw <= 1e-12 or theta <= 0:
        return shift + xs[min(k - 1, math.ceil(q * k - 1e-9) - 1)]
    acc = 0.0  # Σ_{j≤i} e^((x_j − x_i)/θ)
    for i, x in enumerate(xs):
        acc = (acc * math.exp((xs[i - 1] - x) / theta) if i else 0.0) + 1.0
        if (i + 1 - pw * acc) / k >= q:  # the quantile sits on the atom at x
            return shift + x
        head = i + 1 - q * k
        if head > 0:
            t = x + theta * math.log(pw * acc / head)
            if i + 1 == k or t < xs[i + 1]:
                return shift + t
    return shift + xs[-1] + theta * math.log(pw * k / max(k - q * k, 1e-300))  # unreachable for q < 1


def _unstable(rate: float, idle: float, util: float) -> LoadPrediction:
    inf = INF
    return LoadPrediction(
        rate=rate,
        ttft_idle_s=idle,
        ttft_mean_s=inf,
        ttft_p50_s=inf,
        ttft_p90_s=inf,
        tpot_s=inf,
        running_mean=inf,
        utilisation=util,
        stable=False,
    )


@dataclass(frozen=True, slots=True)
class _Queues:
    state: _State
    own: list[float]
    wait_prefill: float
    p_prefill: float
    hold: float
    utilisation: float


def _queues(cost: ReplicaCost, wl: Workload, rate: float, st: _State | None = None) -> _Queues | None:
    """The prefill queue and the seats at ``rate``; None when the decodes or the prefill saturate.

    A prompt waits for the cycle in progress to end (half a cycle, size-biased towards prefill
    cycles) or, when the queue overflows a cycle's room, for the work ahead of it: M/G/1 on the
    room at a full cycle's pace (Pollaczek–Khinchine); the larger of the two."""
    st = st or _state(cost, wl, rate)
    if not (st.rho < 1.0 and math.isfinite(st.tpot)):
        return None
    if cost.chunked_pp:  # one server: the cycle's room at a full cycle's pace
        servers, service = 1, wl.prompt.mean * cycle_time(cost, st.decodes, st.room) / st.room
    else:  # M servers: a prompt holds one micro-batch's room for its chunks' cycles
        servers, service = cost.micro_batches, st.units * st.prefill_cycle
    w_fluid, _ = _wait(servers, rate, service, wl.prompt.cv2)
    if not math.isfinite(w_fluid):
        return None
    mu = max(st.prompts - 1.0, 0.0)
    biased = cycle_time(cost, st.decodes, min(st.room, (1.0 + mu + mu / (1.0 + mu)) * wl.prompt.mean / st.units))
    residual = (st.rho * biased + (1.0 - st.rho) * -math.expm1(-st.decodes) * st.decode_cycle) / 2
    own = _own_prefill(cost, wl, st)
    w_pre = max(residual, w_fluid)  # the fluid wait already holds the residual of the cycle in service
    hold = w_pre + math.fsum(own) / len(own) + max(wl.output.mean - 1.0, 0.0) * st.tpot
    util = max(st.rho, rate * service / servers, rate * hold / cost.seats)
    return _Queues(st, own, w_pre, st.rho, hold, util)


def closed_form(cost: ReplicaCost, workload: Workload, rate: float) -> LoadPrediction:
    """TTFT (mean, p50, p90) and TPOT of one replica at ``rate`` requests/s (Poisson), seconds.

    The queueing approximation of the module docstring; tens of microseconds.
    """
    wl = workload
    idle = idle_ttft(cost, wl.prompt.mean)
    if not rate > 0:
        own = [idle_ttft(cost, p) for p in wl.prompt.points()]
        return LoadPrediction(
            rate=0.0,
            ttft_idle_s=idle,
            ttft_mean_s=math.fsum(own) / len(own),
            ttft_p50_s=_mixture_quantile(0.5, 0.0, own, 0.0, 0.0),
            ttft_p90_s=_mixture_quantile(0.9, 0.0, own, 0.0, 0.0),
            tpot_s=cycle_time(cost, 1.0, 0.0),
            running_mean=0.0,
            utilisation=0.0,
            stable=True,
        )
    qs = _queues(cost, wl, rate)
    if qs is None or not qs.utilisation < 1.0:
        return _unstable(rate, idle, qs.utilisation if qs else 1.0)
    st = qs.state
    cv2_hold = (wl.output.sd * st.tpot / qs.hold) ** 2
    w_seat, pw_seat = _wait(cost.seats, rate, qs.hold, cv2_hold)
    align = 0.0
    wait = qs.wait_prefill + w_seat
    pw = min(1.0, max(qs.p_prefill, pw_seat)) if wait > 0 else 0.0
    theta = wait / pw if pw > 0 else 0.0
    return LoadPrediction(
        rate=rate,
        ttft_idle_s=idle,
        ttft_mean_s=align + wait + math.fsum(qs.own) / len(qs.own),
        ttft_p50_s=_mixture_quantile(0.5, align, qs.own, pw, theta),
        ttft_p90_s=_mixture_quantile(0.9, align, qs.own, pw, theta),
        tpot_s=st.tpot,
        running_mean=rate * qs.hold,
        utilisation=qs.utilisation,
        stable=True,
    )


def max_rate(cost: ReplicaCost, workload: Workload) -> float:
    """Requests/s per replica the replica sustains: the rate where its utilisation reaches 1
    (relative precision 1e-3)."""
    wl = workload
    o1 = max(wl.output.mean - 1.0, 0.0)
    work = cost.stage_per_seq_s * o1 + cost.stage_per_prefill_token_s * wl.prompt.mean
    floor = cost.stage_fixed_s * cost.pp * o1 / cost.seats  # a cycle lasts ≥ PP × fixed; one token per seat
    last = [0.0]  # TPOT at the previous rate tried: the next solve starts there

    def excess(rate: float) -> float:
        """Utilisation − 1; past saturation, how far past (continuous through 0: fast roots)."""
        st = _state(cost, wl, rate, last[0])
        qs = _queues(cost, wl, rate, st) if st.rho < 1.0 and math.isfinite(st.tpot) else None
        if qs is None:
            return min(max(st.rho, 1.0 + 1e-9), 4.0) - 1.0
        last[0] = st.tpot
        return min(qs.utilisation, 4.0) - 1.0

    hi = 1.0 / max(work + floor, 1e-300)
    f_hi = excess(hi)
    while f_hi < 0:  # not an upper bound after all (it is one for every cost this module builds)
        hi *= 2.0
        f_hi = excess(hi)
    rate = _root(excess, 0.0, hi, -1.0, f_hi, 1e-3)
    while excess(rate) >= 0:
        rate *= 1.0 - 1e-3
    return rate

"""What a load run serves: a Poisson arrival stream of requests with the plan's prompt/output lengths.

``ppplan run PLAN --workload poisson:RATE[:N]`` drives the executor's continuous-batching engine
(:mod:`ppplan.executor.serve`) with N requests arriving at RATE requests/s. Everything here is
plain data (no torch): the option's parsing, the seeded arrival times and request lengths, and the
engine settings (token budget per step, most running sequences) taken from the plan.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any

from ppplan.executor.spec import ExecutorError
from ppplan.partitioner.workload import TokenDist

__all__ = [
    "DEFAULT_REQUESTS",
    "LOAD_CPU_CAP",
    "MAX_RATE",
    "MAX_REQUESTS",
    "LoadSpec",
    "Request",
    "parse_load_workload",
    "requests_of",
    "resolve_load",
]

#: requests of ``poisson:RATE`` without a count: enough for percentiles, short on CPU (≈ 10 s)
DEFAULT_REQUESTS = 24
#: most requests one load run serves (the executor keeps every request's outputs in memory)
MAX_REQUESTS = 10_000
#: highest arrival rate accepted, requests/s
MAX_RATE = 1e6
#: longest prompt / output a load run on CPU ranks serves unless the options say otherwise: eager
#: per-sequence forwards of a tiny model take ~1 ms each on one CPU thread, so a plan's 2048-token
#: prompts would make the run minutes long without testing the engine any better
LOAD_CPU_CAP = {"prompt_tokens": 64, "output_tokens": 16}


@dataclass(frozen=True, slots=True)
class Request:
    """One request of the stream."""

    index: int
    arrival_s: float
    """seconds after the stream starts"""
    prompt_tokens: int
    output_tokens: int
    """tokens generated (the first from its last prefill chunk)"""


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """A load run: the arrival process and the engine's settings (plain data, in the run spec)."""

    rate: float
    """mean arrivals per second (Poisson)"""
    requests: int
    prompt_tokens: int
    """mean prompt length, tokens"""
    output_tokens: int
    """mean output length, tokens"""
    prompt_tokens_sd: float = 0.0
    output_tokens_sd: float = 0.0
    token_budget: int = 8192
    """tokens per engine step (decode tokens first, then prefill chunks), vLLM --max-num-batched-tokens"""
    max_seqs: int = 8
    """sequences admitted at once (running or in prefill), vLLM --max-num-seqs"""
    groups: int = 1
    """steps in flight through the pipeline (the plan's micro-batches; vLLM's virtual engines)"""
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and 0 < self.rate <= MAX_RATE):
            raise ExecutorError("workload", self.rate, rule=f"the rate must be requests/s in (0, {MAX_RATE:g}]")
        if not 1 <= self.requests <= MAX_REQUESTS:
            raise ExecutorError("workload", self.requests, rule=f"the request count must be in 1..{MAX_REQUESTS:,}")
        for name in ("prompt_tokens", "output_tokens", "token_budget", "max_seqs", "groups"):
            if getattr(self, name) < 1:
                raise ExecutorError(name, getattr(self, name), rule="must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (the run spec's ``load``)."""
        return asdict(self)


def parse_load_workload(text: str) -> tuple[float, int]:
    """``"poisson:RATE"`` or ``"poisson:RATE:N"`` → (RATE requests/s, N requests).

    Raises:
        ExecutorError: another arrival process, a rate that is not a positive finite number, a count
            outside 1..:data:`MAX_REQUESTS`.
    """
    parts = text.strip().split(":")
    if parts[0] != "poisson" or len(parts) not in (2, 3):
        raise ExecutorError("workload", text, rule="must be poisson:RATE or poisson:RATE:N (RATE requests/s)")
    try:
        rate = float(parts[1])
    except ValueError:
        raise ExecutorError("workload", text, rule="RATE must be a number of requests/s, e.g. poisson:2.5") from None
    if not (math.isfinite(rate) and 0 < rate <= MAX_RATE):
        raise ExecutorError("workload", text, rule=f"RATE must be in (0, {MAX_RATE:g}] requests/s")
    n = DEFAULT_REQUESTS
    if len(parts) == 3:
        if not parts[2].isdigit() or not 1 <= int(parts[2]) <= MAX_REQUESTS:
            raise ExecutorError("workload", text, rule=f"N must be a whole number of requests in 1..{MAX_REQUESTS:,}")
        n = int(parts[2])
    return rate, n


def _length(rng: random.Random, mean: int, sd: float) -> int:
    # the planner's own distribution (lognormal for mean ± sd), clipped so one request cannot
    # dominate a short CPU run
    return min(4 * mean, TokenDist(mean=float(mean), sd=sd).sample(rng, 1)[0])


def requests_of(load: LoadSpec) -> list[Request]:
    """The stream, a function of ``load`` only: exponential gaps of mean 1/rate; lengths fixed, or
    with an sd drawn as the planner's :class:`~ppplan.partitioner.workload.TokenDist` does
    (lognormal), clipped to 4 × the mean."""
    rng = random.Random(f"ppplan-load:{load.seed}")
    t, out = 0.0, []
    for i in range(load.requests):
        t += rng.expovariate(load.rate)
        out.append(
            Request(
                index=i,
                arrival_s=t,
                prompt_tokens=_length(rng, load.prompt_tokens, load.prompt_tokens_sd),
                output_tokens=_length(rng, load.output_tokens, load.output_tokens_sd),
            )
        )
    return out


def _opt_int(v: Any) -> int | None:
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) and v >= 1 else None


def resolve_load(
    plan: dict[str, Any],
    device: str,
    rate: float,
    requests: int,
    *,
    prompt_tokens: int | None = None,
    output_tokens: int | None = None,
    token_budget: int | None = None,
    max_seqs: int | None = None,
    seed: int = 0,
) -> tuple[LoadSpec, list[str]]:
    """The load run of ``plan`` at ``rate`` and notes saying where each setting came from.

    Lengths: the plan's workload (means and sds); on CPU ranks capped at :data:`LOAD_CPU_CAP` (the
    token budget scaled by the same factor as the prompt), and a GPU plan checked on CPU ranks gets
    the capped lengths too. Token budget: the plan's ``workload.token_budget``, else its request's
    ``prefill_chunk_tokens``. Most running sequences: the plan's sequences per replica (micro-batches ×
    micro-batch size). Steps in flight: the plan's micro-batches. Options override each.
    """
    wl, deg, req = plan["workload"], plan["degrees"], plan.get("request") or {}
    P, N = int(wl["prompt_tokens"]), int(wl["output_tokens"])
    budget = _opt_int(wl.get("token_budget")) or _opt_int(req.get("prefill_chunk_tokens")) or 8192
    notes = []
    p_sd = float(wl.get("prompt_tokens_sd") or 0.0)
    o_sd = float(wl.get("output_tokens_sd") or 0.0)
    if device == "cpu" and (LOAD_CPU_CAP["prompt_tokens"] < P or LOAD_CPU_CAP["output_tokens"] < N):
        p2, n2 = min(P, LOAD_CPU_CAP["prompt_tokens"]), min(N, LOAD_CPU_CAP["output_tokens"])
        scale = p2 / P
        budget = max(1, math.ceil(budget * scale))
        p_sd, o_sd = p_sd * scale, o_sd * n2 / N
        notes.append(
            f"lengths scaled down for CPU ranks: prompt {P} → {p2}, output {N} → {n2} tokens, token budget "
            f"× {scale:.3g} (pass --prompt-tokens/--new-tokens/--token-budget to change them)"
        )
        P, N = p2, n2
    P = prompt_tokens or P
    N = output_tokens or N
    budget = token_budget or budget
    groups = max(1, int(deg["micro_batches"]))
    seqs = max_seqs or max(1, groups * int(deg["micro_batch_size"]))
    notes.append(
        f"engine: token budget {budget} per step, at most {seqs} sequences, {groups} step(s) in flight "
        f"(the plan's micro-batches); {requests} requests at {rate:g}/s, prompt {P}, output {N} tokens"
    )
    load = LoadSpec(
        rate=rate,
        requests=requests,
        prompt_tokens=P,
        output_tokens=N,
        prompt_tokens_sd=p_sd,
        output_tokens_sd=o_sd,
        token_budget=budget,
        max_seqs=seqs,
        groups=groups,
        seed=seed,
    )
    return load, notes

"""Closed-form TTFT/TPOT under load against the discrete-event simulator, and what each costs.

For each case (a replica's linear step cost and a request shape) at 20 %, 50 % and 80 % of the rate
the closed form says the replica sustains (``max_rate``), prints the closed-form and simulated mean
and p90 TTFT and mean TPOT with the relative error (closed form / simulated − 1), then a summary of
the errors over the cases and the timings (CPU time of this process): microseconds per ``closed_form``
and ``max_rate`` call, milliseconds per ``simulate`` run. A last block shows the idle TTFT of long
prompts with and without chunked pipeline parallelism (PP cuts TTFT only when chunks pipeline).

The first three cases are the ones ``tests/test_load.py`` asserts on; the others probe the model's
edges (long prompts, micro-batches ≠ PP, a small token budget, a histogram, few seats).

Usage: python benchmarks/bench_queueing.py [--requests 3000] [--seeds 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from ppplan.partitioner.load import ReplicaCost, closed_form, idle_ttft, max_rate
from ppplan.partitioner.simulate import simulate
from ppplan.partitioner.workload import TokenDist, Workload

LOADS = (0.2, 0.5, 0.8)


def _cost(pp: int, m: int | None = None, *, chunked: bool = True, seats: int = 128, budget: int = 8192,
          per_tok: float = 6e-5) -> ReplicaCost:  # fmt: skip
    """A model whose whole decode step is 20 ms + 0.2 ms per sequence, split evenly over PP stages."""
    return ReplicaCost(
        pp=pp, micro_batches=pp if m is None else m, stage_fixed_s=0.02 / pp, stage_per_seq_s=2e-4 / pp,
        stage_per_prefill_token_s=per_tok / pp, token_budget=budget, max_seqs=seats, chunked_pp=chunked,
    )  # fmt: skip


def _wl(prompt: float, prompt_sd: float, output: float, output_sd: float) -> Workload:
    return Workload(prompt=TokenDist(mean=prompt, sd=prompt_sd), output=TokenDist(mean=output, sd=output_sd))


BASE = _wl(4000, 1000, 300, 100)
LONG = _wl(32_000, 4000, 300, 100)
CASES: list[tuple[str, ReplicaCost, Workload]] = [
    ("4k PP1", _cost(1), BASE),
    ("4k PP4 chunked-PP", _cost(4), BASE),
    ("4k PP4 one chunk/cycle", _cost(4, chunked=False), BASE),
    ("chat 500/500 PP1", _cost(1), _wl(500, 200, 500, 200)),
    ("chat 500/500 PP4", _cost(4), _wl(500, 200, 500, 200)),
    ("32k PP1", _cost(1, seats=32, per_tok=1e-4), LONG),
    ("32k PP4 chunked-PP", _cost(4, seats=32, per_tok=1e-4), LONG),
    ("32k PP4 one chunk/cycle", _cost(4, chunked=False, seats=32, per_tok=1e-4), LONG),
    ("4k PP4 M=8", _cost(4, 8), BASE),
    ("4k PP4 M=1", _cost(4, 1), BASE),
    ("4k PP2 budget 2048", _cost(2, budget=2048), BASE),
    (
        "histogram PP2",
        _cost(2),
        Workload(
            prompt=TokenDist.from_histogram([(256, 5), (2048, 3), (16_000, 1)]),
            output=TokenDist.from_histogram([(50, 1), (500, 2), (2000, 1)]),
        ),
    ),
    ("1k/1k PP2 16 seats", _cost(2, seats=16), _wl(1000, 300, 1000, 300)),
]


@dataclass
class _Errors:
    ttft: list[float]
    p90: list[float]
    tpot: list[float]


def _err(pred: float, sim: float) -> float:
    return pred / sim - 1.0 if sim > 0 and sim != float("inf") else float("nan")


def _us(fn: Callable[[], object], n: int) -> float:
    """CPU microseconds per call (process time: other processes on a shared machine do not count)."""
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--seeds", type=int, default=1, help="simulations per point (results averaged)")
    args = ap.parse_args()
    print(f"{'case':26} {'load':>4} {'req/s':>7}  {'TTFT mean cf/sim (err)':>25}  {'TTFT p90 cf/sim (err)':>25}  "
          f"{'TPOT ms cf/sim (err)':>24}  {'cf µs':>6} {'sim ms':>7}")  # fmt: skip
    grid, edges = _Errors([], [], []), _Errors([], [], [])
    cf_us, sim_ms, max_us = [], [], []
    for i, (name, cost, wl) in enumerate(CASES):
        cap = max_rate(cost, wl)
        max_us.append(_us(lambda c=cost, w=wl: max_rate(c, w), 20))
        for load in LOADS:
            rate = load * cap
            cf = closed_form(cost, wl, rate)
            cf_us.append(_us(lambda c=cost, w=wl, r=rate: closed_form(c, w, r), 200))
            t0 = time.process_time()
            sims = [simulate(cost, wl, rate, requests=args.requests, seed=s) for s in range(args.seeds)]
            sim_ms.append((time.process_time() - t0) / args.seeds * 1e3)
            if not all(s.stable for s in sims):
                print(f"{name:26} {load:4.0%} {rate:7.3f}  simulated queue unstable (closed form: stable={cf.stable})")
                continue
            st = statistics.fmean
            sim_ttft, sim_p90 = st(s.ttft_mean_s for s in sims), st(s.ttft_p90_s for s in sims)
            sim_tpot = st(s.tpot_s for s in sims)
            e = (_err(cf.ttft_mean_s, sim_ttft), _err(cf.ttft_p90_s, sim_p90), _err(cf.tpot_s, sim_tpot))
            errs = grid if i < 3 else edges
            errs.ttft.append(e[0])
            errs.p90.append(e[1])
            errs.tpot.append(e[2])
            print(
                f"{name:26} {load:4.0%} {rate:7.3f}  {cf.ttft_mean_s:8.3f}/{sim_ttft:7.3f} ({e[0]:+5.0%})  "
                f"{cf.ttft_p90_s:8.3f}/{sim_p90:7.3f} ({e[1]:+5.0%})  {cf.tpot_s * 1e3:7.1f}/{sim_tpot * 1e3:6.1f} "
                f"({e[2]:+5.0%})  {cf_us[-1]:6.0f} {sim_ms[-1]:7.1f}"
            )
    print()
    for label, errs in (("tested grid (first 3 cases)", grid), ("edge cases", edges)):
        for what, xs in (("TTFT mean", errs.ttft), ("TTFT p90", errs.p90), ("TPOT", errs.tpot)):
            a = [abs(x) for x in xs if x == x]
            if a:
                print(
                    f"{label:28} {what:10} |error| median {statistics.median(a):5.1%}  max {max(a):5.1%}  (n={len(a)})"
                )
    print(
        f"\nclosed_form: median {statistics.median(cf_us):.0f} µs per call; max_rate: median "
        f"{statistics.median(max_us):.0f} µs; simulate ({args.requests} requests): median "
        f"{statistics.median(sim_ms):.0f} ms per run"
    )
    print("\nidle TTFT (s), model step 20 ms + 0.06 ms per prefill token split over PP stages, budget 8192:")
    print(f"{'prompt':>8} {'PP1':>7} {'PP4 chunked-PP':>15} {'PP4 one chunk/cycle':>20}")
    for prompt in (4000, 32_000, 128_000):
        print(f"{prompt:8} {idle_ttft(_cost(1), prompt):7.2f} {idle_ttft(_cost(4), prompt):15.2f} "
              f"{idle_ttft(_cost(4, chunked=False), prompt):20.2f}")  # fmt: skip


if __name__ == "__main__":
    main()

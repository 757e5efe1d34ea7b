"""Full-search time and predicted gain over the engines' default cuts, for the bundled models.

Prints, for each model on 8, 16 and 64 H100s: the search time (median of repeated warm runs, one
core), the configurations solved exactly by branch and bound, the chosen degrees, and the chosen
plan's predicted throughput and KV-capacity gain over vLLM / SGLang / TensorRT-LLM with the same
degrees. Because the best plan often has PP = 1 (nothing to cut), a second block pins PP to the
largest power of two that fits with TP = 8 (or TP = 1 for small models) to show what the cut buys.

Usage: python benchmarks/bench_planner.py [--repeat 5]
Target: Llama-3.1-405B on 64 GPUs in under 100 ms on one core, for each objective (the last block).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from ppplan.partitioner.request import PlanRequest
from ppplan.partitioner.search import InfeasibleError
from ppplan.profiler.resolve import plan_request

MODELS = [
    "llama-3.1-8b",
    "llama-3.1-70b",
    "llama-3.1-405b",
    "qwen2.5-72b",
    "mixtral-8x7b",
    "deepseek-v3",
    "kimi-k2",
    "gpt-oss-120b",
    "gemma-3-27b",
]
DTYPE = {"deepseek-v3": "fp8", "kimi-k2": "int4"}  # the checkpoints' own precision class


def _gain(b) -> str:
    return f"{b.throughput_gain:+6.1%}" if b.throughput_gain is not None else (" unfit" if not b.feasible else "   n/a")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(
        f"{'model':16} {'GPUs':>5} {'ms(med)':>8} {'cuts':>5} {'TPxPPxR':>9} {'tok/s':>8} "
        f"{'vLLM':>7} {'SGLang':>7} {'TRT':>7}  partition"
    )
    pinned_rows = []
    for model in MODELS:
        wd = DTYPE.get(model, "bf16")
        for g in (8, 16, 64):
            req = PlanRequest(model=model, gpus=f"{g}xH100", weight_dtype=wd)
            try:
                plan_request(req)  # warm: loads the model description once
            except InfeasibleError:
                print(f"{model:16} {g:5} does not fit in {wd}")
                continue
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                p = plan_request(req)
                times.append((time.perf_counter() - t0) * 1e3)
            d = p.degrees
            bl = {b.engine: b for b in p.baselines}
            part = ",".join(map(str, p.partition)) if len(p.partition) <= 8 else f"{len(p.partition)} stages"
            print(
                f"{model:16} {g:5} {statistics.median(times):8.1f} {p.provenance.configs_evaluated:5} "
                f"{f'{d.tp}x{d.pp}x{d.replicas}':>9} {p.metrics.throughput_tokens_per_s:8.0f} "
                f"{_gain(bl['vllm']):>7} {_gain(bl['sglang']):>7} {_gain(bl['trtllm']):>7}  {part}"
            )
            tp = 8 if model not in ("llama-3.1-8b", "gemma-3-27b") else 1
            pp = 1
            while tp * pp * 2 <= g and pp * 2 <= p.model.num_layers:
                pp *= 2
            if pp > 1:
                try:
                    q = plan_request(PlanRequest(model=model, gpus=f"{g}xH100", weight_dtype=wd, tp=tp, pp=pp))
                    pinned_rows.append((model, g, tp, pp, q))
                except InfeasibleError:
                    pass
    print("\npinned PP (what the cut alone buys, same degrees as each engine default)")
    print(f"{'model':16} {'GPUs':>5} {'TPxPP':>6} {'vLLM':>7} {'SGLang':>7} {'TRT':>7} {'KV vs vLLM':>10}  plan / vLLM")
    for model, g, tp, pp, q in pinned_rows:
        bl = {b.engine: b for b in q.baselines}
        kv = bl["vllm"].kv_capacity_gain
        part = ",".join(map(str, q.partition)) if pp <= 8 else f"first {q.partition[:3]} last {q.partition[-3:]}"
        vp = ",".join(map(str, bl["vllm"].partition)) if pp <= 8 else "equal"
        print(
            f"{model:16} {g:5} {f'{tp}x{pp}':>6} {_gain(bl['vllm']):>7} {_gain(bl['sglang']):>7} "
            f"{_gain(bl['trtllm']):>7} {f'{kv:+.1%}' if kv is not None else 'n/a':>10}  {part} / {vp}"
        )
    print("\nLlama-3.1-405B on 64xH100 (8 nodes), full search incl. the batch decision and the Pareto front:")
    print("(wall: elapsed time; cpu: this process's CPU time, which a busy shared host disturbs less)")
    print(
        f"{'case':44} {'wall med':>8} {'cpu med':>8} {'cpu min':>8} {'cuts':>5} {'TPxPPxR':>9} {'batch':>6} "
        f"{'TPOT ms':>8}"
    )
    cases = {
        "throughput, no SLO": {},
        "throughput, TPOT <= 60 ms": {"max_tpot_ms": 60.0},
        "throughput, TPOT <= 60 ms, TTFT p90 <= 3 s": {"max_tpot_ms": 60.0, "max_ttft_ms": 3000.0},
        "min-gpus, 5 req/s, TTFT p90 <= 3 s": {"objective": "min-gpus", "request_rate": 5.0, "max_ttft_ms": 3000.0},
        "latency": {"objective": "latency"},
        "pinned concurrency 64 (the old search)": {"concurrency": 64},
    }
    medians = []
    for name, extra in cases.items():
        req = PlanRequest(model="llama-3.1-405b", gpus="64xH100", nodes=8, **extra)
        times, cpu = [], []
        for _ in range(max(args.repeat, 10)):
            t0, c0 = time.perf_counter(), time.process_time()
            p = plan_request(req)
            times.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
        d = p.degrees
        medians.append((statistics.median(times), statistics.median(cpu)))
        print(
            f"{name:44} {statistics.median(times):8.1f} {statistics.median(cpu):8.1f} {min(cpu):8.1f} "
            f"{p.provenance.configs_evaluated:5} {f'{d.tp}x{d.pp}x{d.replicas}':>9} "
            f"{d.micro_batches * d.micro_batch_size:6} {p.metrics.tpot_ms:8.1f}"
        )
    print(
        f"worst median: {max(m[0] for m in medians):.1f} ms wall, {max(m[1] for m in medians):.1f} ms CPU "
        "(target < 100 ms on one core)"
    )


if __name__ == "__main__":
    main()

"""Executor benchmark on CPU ranks: correctness, predicted vs measured, and the calibration loop.

For each model: plan it for CPU ranks (``--gpus NxCPU``), run the plan with the executor (gloo),
fit the CPU pseudo-device's efficiency from the run's stage measurements (the same path as
``ppplan run PLAN_ID --calibrate``), and print the median absolute relative error of the stage
times predicted before and after calibration: in-sample (the fitted run) and held out (a second
run with another prompt length and generation length). Then replan with the calibrated profile.

    python benchmarks/bench_executor.py            # tiny-llama and tiny-moe, PP 2
    python benchmarks/bench_executor.py --pp 4 --models tiny-llama
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from ppplan.executor.calibration import fit_stage_measurements, predict_stage_seconds, profile_for_plan
from ppplan.executor.report import store_rows
from ppplan.executor.run import run_plan
from ppplan.partitioner.request import PlanRequest
from ppplan.profiler.resolve import plan_request

#: the fitted run: the plan's own workload
FIT_WORKLOAD = {"prompt_tokens": 32, "output_tokens": 16, "concurrency": 8}
#: the held-out run: another prompt length and generation length, the plan's micro-batches
HELD_OUT = {"prompt_tokens": 64, "new_tokens": 12}
TARGET = 0.15


def _errors(plan: dict[str, Any], profile: Any, report: dict[str, Any]) -> list[float]:
    """|predicted / measured - 1| per stage and phase of one run."""
    wl = report["workload"]
    b, P, N = wl["micro_batch_size"], wl["prompt_tokens"], wl["new_tokens"]
    pre = predict_stage_seconds(plan, profile, phase="prefill", tokens=P, context=P, batch=b)
    dec = predict_stage_seconds(plan, profile, phase="decode", tokens=b, context=P + N // 2)
    out = []
    for st in report["stages"]:
        i = st["index"]
        out.append(abs(pre[i] / st["measured"]["prefill"]["median_step_s"] - 1))
        out.append(abs(dec[i] / st["measured"]["decode"]["median_step_s"] - 1))
    return out


def bench(model: str, pp: int) -> dict[str, Any]:
    req = PlanRequest(model=model, gpus=f"{pp}xCPU", pp=pp, tp=1, **FIT_WORKLOAD)
    plan = plan_request(req).model_dump(mode="json")
    t0 = time.perf_counter()
    fit_run = run_plan(plan)
    held = run_plan(plan, **HELD_OUT)
    wall = time.perf_counter() - t0
    if fit_run is None or held is None:
        raise RuntimeError("a one-node run returned no report")
    base = profile_for_plan(plan)
    rows = store_rows(fit_run, "fit")
    cal, eff, npts = fit_stage_measurements(plan, rows, base, source="bench_executor")
    replanned = plan_request(req, cal).model_dump(mode="json")
    res = {
        "model": model,
        "pp": pp,
        "partition": plan["partition"],
        "replanned": replanned["partition"],
        "check": (fit_run["check"]["passed"], held["check"]["passed"]),
        "max_logit_diff": max(fit_run["check"]["logits_max_abs_diff"], held["check"]["logits_max_abs_diff"]),
        "before_in": statistics.median(_errors(plan, base, fit_run)),
        "after_in": statistics.median(_errors(plan, cal, fit_run)),
        "before_held": statistics.median(_errors(plan, base, held)),
        "after_held": statistics.median(_errors(plan, cal, held)),
        "eff": eff,
        "points": npts,
        "run_s": wall,
        "report": fit_run,
    }
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny-llama", "tiny-moe"])
    ap.add_argument("--pp", type=int, default=2)
    args = ap.parse_args()
    print(f"executor benchmark on CPU ranks (gloo), PP {args.pp}; fit workload {FIT_WORKLOAD}, held-out run {HELD_OUT}")
    worst = 0.0
    for m in args.models:
        r = bench(m, args.pp)
        print(
            f"\n{m}: partition {r['partition']}, check passed {r['check']} (max |Δlogit| "
            f"{r['max_logit_diff']:.1e}), two runs in {r['run_s']:.1f} s"
        )
        print("  stage  decode ms pred/meas   prefill ms/prompt pred/meas   wait s pre/dec   sent KiB")
        for st in r["report"]["stages"]:
            p, me = st["predicted"], st["measured"]
            sent = (me["prefill"]["bytes_sent"] + me["decode"]["bytes_sent"]) / 1024
            print(
                f"  {st['index']:>5}  {p['decode_ms']:8.3f} / {me['decode_ms']:7.3f}   "
                f"{p['prefill_ms']:13.3f} / {me['prefill_ms']:7.3f}       "
                f"{me['prefill']['wait_s']:.3f}/{me['decode']['wait_s']:.3f}   {sent:8.1f}"
            )
        e = r["eff"]
        print(
            f"  fit: η compute {e.compute:.4g}, η memory {e.memory:.4g}, overhead {e.overhead_s * 1e6:.1f} µs "
            f"per unit forward ({r['points']} unit points)"
        )
        print(
            f"  median |error| of stage times: uncalibrated {r['before_in']:.1%} → calibrated {r['after_in']:.1%} "
            f"(fitted run); held-out run {r['before_held']:.1%} → {r['after_held']:.1%}"
        )
        print(f"  replanned with the calibrated profile: {r['partition']} → {r['replanned']}")
        worst = max(worst, r["after_held"])
    verdict = "within" if worst <= TARGET else "OUTSIDE"
    print(f"\nworst held-out calibrated median error {worst:.1%}: {verdict} the {TARGET:.0%} target")


if __name__ == "__main__":
    main()

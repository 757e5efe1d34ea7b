"""Load benchmark on CPU ranks: TTFT and TPOT under a Poisson stream, predicted vs measured.

Plans tiny-llama for 2 CPU ranks at PP 2, serves a short pilot stream to fit the step cost (the
same fit as ``ppplan run PLAN --workload poisson:RATE``) and the rate the replica sustains
(:func:`ppplan.partitioner.load.max_rate`), then serves three streams at shares of that rate. Each
run is predicted with :func:`ppplan.partitioner.load.closed_form` from its own fitted steps
("after calibration"), from the pilot's fit (held out) and from the plan's stage times, and the
benchmark prints the median |predicted − measured| / measured of TTFT (p50 and p90) and TPOT (p50)
over the three rates.

    python benchmarks/bench_load.py                       # about two minutes on a 2-core host
    python benchmarks/bench_load.py --requests 60 --shares 0.2,0.4,0.6

CPU timings on a shared host are noisy: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from typing import Any

from ppplan.executor.arrivals import LoadSpec, resolve_load
from ppplan.executor.load_report import predict
from ppplan.executor.run import run_plan
from ppplan.partitioner.load import ReplicaCost, max_rate
from ppplan.partitioner.request import PlanRequest
from ppplan.partitioner.workload import TokenDist, Workload
from ppplan.profiler.resolve import plan_request

#: the plan: short prompts and outputs keep a CPU stream to seconds
PLAN = {"prompt_tokens": 32, "output_tokens": 16, "concurrency": 8}
TARGET = 0.20


def _rel(pred: float, meas: float | None) -> float | None:
    return abs(pred - meas) / meas if meas and math.isfinite(pred) else None


def _run(plan: dict[str, Any], rate: float, requests: int, *, check: bool) -> dict[str, Any]:
    load, _ = resolve_load(plan, "cpu", rate, requests)
    rep = run_plan(plan, load=load, check=check)
    if rep is None:
        raise RuntimeError("a one-node run returned no report")
    if check and not rep["check"]["passed"]:
        raise RuntimeError(f"the load run differs from the unsplit model: {rep['check']}")
    return rep


def _coefficients(rep: dict[str, Any]) -> tuple[float, float, float]:
    """(fixed, per sequence, per prefill token) seconds of a run's fit, as the report predicts with."""
    ld, f = rep["load"], rep["fit"]
    per_tok = f["per_prefill_token_s"] + f["per_entry_s"] / min(ld["token_budget"], ld["prompt_tokens"])
    return f["fixed_s"], f["per_entry_s"], per_tok


def _capacity(plan: dict[str, Any], rep: dict[str, Any]) -> float:
    """Requests/s the fitted step cost sustains (the pilot's fit, its engine settings)."""
    ld = rep["load"]
    fixed, per_seq, per_tok = _coefficients(rep)
    cost = ReplicaCost(
        pp=len(rep["stages"]),
        micro_batches=ld["groups"],
        stage_fixed_s=fixed,
        stage_per_seq_s=per_seq,
        stage_per_prefill_token_s=per_tok,
        token_budget=ld["token_budget"],
        max_seqs=ld["max_seqs"],
    )
    wl = Workload(prompt=TokenDist.fixed(ld["prompt_tokens"]), output=TokenDist.fixed(ld["output_tokens"]))
    return max_rate(cost, wl)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=40, help="requests per measured stream")
    ap.add_argument("--shares", default="0.15,0.3,0.45", help="rates as shares of the fitted capacity")
    args = ap.parse_args()
    shares = [float(x) for x in args.shares.split(",")]
    req = PlanRequest(model="tiny-llama", gpus="2xCPU", pp=2, tp=1, **PLAN)
    plan = plan_request(req).model_dump(mode="json")
    t0 = time.perf_counter()
    pilot = _run(plan, 2.0, 16, check=True)
    cap = _capacity(plan, pilot)
    print(
        f"tiny-llama PP 2 on CPU, partition {plan['partition']}; pilot: {pilot['check']['tokens_total']} tokens "
        f"checked (max |Δlogit| {pilot['check']['logits_max_abs_diff']:.1e}), fitted capacity {cap:.2f} requests/s"
    )
    print(
        "rate/s  util | TTFT p50 ms meas / own fit / pilot fit | p90 ms meas / own / pilot | "
        "TPOT ms meas / own / pilot | plan-based errors"
    )
    cal_ttft, cal_tpot, plan_ttft, plan_tpot, held_ttft, held_tpot = [], [], [], [], [], []
    pilot_cost = _coefficients(pilot)
    for share in shares:
        rep = _run(plan, share * cap, args.requests, check=False)
        m, p, e = rep["measured"], rep["predicted"]["calibrated"], rep["error"]
        h = predict(len(rep["stages"]), LoadSpec(**rep["load"]), *pilot_cost)
        cal_ttft += [e["calibrated"]["ttft_p50"], e["calibrated"]["ttft_p90"]]
        cal_tpot.append(e["calibrated"]["tpot_p50"])
        plan_ttft += [e["plan"]["ttft_p50"], e["plan"]["ttft_p90"]]
        plan_tpot.append(e["plan"]["tpot_p50"])
        held_ttft += [_rel(h["ttft_p50_s"], m["ttft"]["p50"]), _rel(h["ttft_p90_s"], m["ttft"]["p90"])]
        held_tpot.append(_rel(h["tpot_s"], m["tpot"]["p50"]))
        plan_errs = " / ".join(f"{x:.0%}" if x is not None else "-" for x in e["plan"].values())
        ms = lambda x: f"{x * 1e3:.1f}"  # noqa: E731
        print(
            f"{share * cap:6.2f} {p['utilisation']:5.2f} | {ms(m['ttft']['p50'])} / {ms(p['ttft_p50_s'])} / "
            f"{ms(h['ttft_p50_s'])} | {ms(m['ttft']['p90'])} / {ms(p['ttft_p90_s'])} / {ms(h['ttft_p90_s'])} | "
            f"{ms(m['tpot']['p50'])} / {ms(p['tpot_s'])} / {ms(h['tpot_s'])} | {plan_errs}"
        )

    def med(xs: list[float | None]) -> float:
        vals = [x for x in xs if x is not None]
        return statistics.median(vals) if vals else float("nan")

    print(
        f"median |predicted − measured| / measured after calibration (each run's own steps): TTFT "
        f"{med(cal_ttft):.1%}, TPOT {med(cal_tpot):.1%} (target ≤ {TARGET:.0%}); held out (the pilot's fit): "
        f"TTFT {med(held_ttft):.1%}, TPOT {med(held_tpot):.1%}; from the plan's stage times: TTFT "
        f"{med(plan_ttft):.0%}, TPOT {med(plan_tpot):.0%}"
    )
    print(f"wall {time.perf_counter() - t0:.0f} s; host load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()

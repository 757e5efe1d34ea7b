"""A load run's report: measured TTFT/TPOT percentiles next to the predicted ones, before and after
calibration, and the rows the store keeps.

Measured, per request (stage 0's clock, when the scheduler has the token): TTFT = first token −
arrival; TPOT = (last token − first token) / (output tokens − 1). Percentiles are numpy's linear
ones over the requests.

Predicted with :func:`ppplan.partitioner.load.closed_form` at the run's rate and request shape, from
a :class:`~ppplan.partitioner.load.ReplicaCost` whose stage coefficients are

* *plan*: the plan's own stage times (the slowest stage's decode step / micro-batch size per
  sequence, its prefill / prompt tokens per prefill token, no fixed part);
* *calibrated*: a least-squares fit of this run's own steps (:func:`fit_step_cost`): the pipeline
  advances at its slowest stage, so each step's cost is its largest stage slot, fitted as
  fixed + per entry × entries + per prefill token × prefill tokens over steps of varying
  composition (decode-only steps, chunks, both). A stage's slot is its busy time (compute plus the
  step's scheduling on stage 0, bookkeeping and send posting) plus the hop into it (:func:`stage_slots`),
  as the planner puts the send latency into the fixed part.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ppplan.executor.arrivals import LoadSpec
from ppplan.executor.report import run_header, run_title, same_device

__all__ = [
    "StepFit",
    "build_load_report",
    "fit_step_cost",
    "load_rows",
    "measured_latencies",
    "predict",
    "print_load_report",
    "stage_slots",
]

QUANTILES = {"p50": 50.0, "p90": 90.0}


@dataclass(frozen=True, slots=True)
class StepFit:
    """A stage step's cost fitted from measured steps (seconds)."""

    fixed_s: float
    """per step"""
    per_entry_s: float
    """per sequence in the step (a decode token, or a prefill chunk: one forward each)"""
    per_prefill_token_s: float
    """per prompt token prefilled"""
    steps: int
    """steps fitted"""
    median_rel_error: float
    """median |fit − measured| / measured over those steps"""
    hop_s: float = 0.0
    """mean slot − busy time: the hop into a stage (wake-up and transfer of a step's input), part
    of ``fixed_s``; 0 for ranks on several hosts (their clocks are not comparable)"""
    mean_slot_s: float = 0.0
    """the fitted slot averaged over the run's steps (the stage with the longest one is the fit)"""


def stage_slots(steps_by_stage: list[list[dict[str, float]]]) -> list[list[float]]:
    """Per stage and step, the seconds the step occupied the stage: from when the stage could take
    it (its previous step sent, and the step's input sent by the stage before; on stage 0 the tokens
    of the group's previous step sent by the last stage) to when it was sent on. That is its busy
    time plus the hop: the wake-up and transfer of its input, never idle time waiting for work.
    Uses the ranks' ``time.perf_counter`` stamps, comparable on one host."""
    pp, n = len(steps_by_stage), min(len(s) for s in steps_by_stage)
    out = []
    for s, recs in enumerate(steps_by_stage):
        slots = []
        for k in range(n):
            r = recs[k]
            free = recs[k - 1]["out_t"] if k else -math.inf
            if s > 0:
                ready = steps_by_stage[s - 1][k]["out_t"]
            else:
                prev = int(r.get("after", -1))
                if not (pp > 1 and 0 <= prev < n):  # it waited for no tokens: it started when it began
                    free = ready = r["in_t"]
                else:
                    ready = steps_by_stage[-1][prev]["out_t"]
            start = min(r["in_t"], max(free, ready))  # stage 0 taking new work after idling: in_t
            slots.append(r["out_t"] - start)
        out.append(slots)
    return out


def _nnls(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares for a few columns: the best least-squares fit over the subsets of
    columns whose unconstrained solution is non-negative (2^columns solves; 8 here)."""
    k = X.shape[1]
    best, best_r = np.zeros(k), float(np.sum(y * y))
    for mask in range(1, 2**k):
        cols = [j for j in range(k) if mask >> j & 1]
        sol = np.linalg.lstsq(X[:, cols], y, rcond=None)[0]
        if np.any(sol < 0):
            continue
        coef = np.zeros(k)
        coef[cols] = sol
        r = float(np.sum((X @ coef - y) ** 2))
        if r < best_r:
            best, best_r = coef, r
    return best


def fit_step_cost(steps_by_stage: list[list[dict[str, float]]], *, same_host: bool = True) -> StepFit:
    """Least squares (non-negative) of each stage's step slots on (1, entries, prefill tokens); the
    fit of the stage with the longest mean slot wins (the pipeline's pace is its busiest stage's,
    not the mean of each step's slowest stage: independent noise would bias that upward). A slot is
    :func:`stage_slots` on one host (busy time plus hop), else the busy time alone. Ordinary, not
    relative, least squares: the queueing model needs the mean step, preemptions of a busy host
    included.

    Args:
        steps_by_stage: per stage, its step records in order (``entries``, ``prefill_tokens``,
            ``busy_s``, ``in_t``, ``out_t``); every stage ran the same steps.
        same_host: the ranks' clocks are comparable.
    """
    n = min(len(s) for s in steps_by_stage)
    if n < 3:
        raise ValueError(f"{n} steps are too few to fit three coefficients")
    first = steps_by_stage[0]
    busy = [[recs[k]["busy_s"] for k in range(n)] for recs in steps_by_stage]
    slots = stage_slots(steps_by_stage) if same_host else busy
    X = np.array([[1.0, first[k]["entries"], first[k]["prefill_tokens"]] for k in range(n)])
    best: StepFit | None = None
    for sl, bz in zip(slots, busy, strict=True):
        y = np.array(sl)
        coef = _nnls(X, y)
        fit = X @ coef
        rel = float(np.median(np.abs(fit - y) / np.maximum(y, 1e-12)))
        hop = max(0.0, float(np.mean(y - np.array(bz))))
        cand = StepFit(float(coef[0]), float(coef[1]), float(coef[2]), n, rel, hop, float(fit.mean()))
        if best is None or cand.mean_slot_s > best.mean_slot_s:
            best = cand
    assert best is not None
    return best


def measured_latencies(timeline: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Per request TTFT (seconds) and, for requests of ≥ 2 output tokens, TPOT (seconds)."""
    ttft, tpot = [], []
    for r in timeline:
        times = r["token_times_s"]
        if not times:
            continue
        ttft.append(times[0] - r["arrival_s"])
        if len(times) > 1:
            tpot.append((times[-1] - times[0]) / (len(times) - 1))
    return ttft, tpot


def _pct(values: list[float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {k: None for k in QUANTILES}
    if values:
        for k, q in QUANTILES.items():
            out[k] = float(np.percentile(values, q))
        out["mean"] = float(np.mean(values))
    return out


def _plan_cost(plan: dict[str, Any]) -> tuple[float, float, float]:
    """(fixed, per sequence, per prefill token) seconds of the plan's slowest stage."""
    b = max(1, int(plan["degrees"]["micro_batch_size"]))
    P = max(1, int(plan["workload"]["prompt_tokens"]))
    per_seq = max(float(s["times"]["decode_ms"]) for s in plan["stages"]) / 1e3 / b
    per_tok = max(float(s["times"]["prefill_ms"]) for s in plan["stages"]) / 1e3 / P
    return 0.0, per_seq, per_tok


def predict(pp: int, load: LoadSpec, fixed_s: float, per_seq_s: float, per_prefill_token_s: float) -> dict[str, Any]:
    """:func:`ppplan.partitioner.load.closed_form` for the run's engine settings and request shape."""
    from ppplan.partitioner.load import ReplicaCost, closed_form  # lazy: the predictions' module
    from ppplan.partitioner.workload import TokenDist, Workload  # lazy: as above

    cost = ReplicaCost(
        pp=pp,
        micro_batches=load.groups,
        stage_fixed_s=fixed_s,
        stage_per_seq_s=per_seq_s,
        stage_per_prefill_token_s=per_prefill_token_s,
        token_budget=load.token_budget,
        max_seqs=load.max_seqs,
        chunked_pp=True,
    )
    wl = Workload(
        prompt=TokenDist(mean=float(load.prompt_tokens), sd=load.prompt_tokens_sd),
        output=TokenDist(mean=float(load.output_tokens), sd=load.output_tokens_sd),
    )
    p = closed_form(cost, wl, load.rate)
    return {
        "ttft_p50_s": p.ttft_p50_s,
        "ttft_p90_s": p.ttft_p90_s,
        "ttft_mean_s": p.ttft_mean_s,
        "ttft_idle_s": p.ttft_idle_s,
        "tpot_s": p.tpot_s,
        "utilisation": p.utilisation,
        "running_mean": p.running_mean,
        "stable": p.stable,
        "cost": {"fixed_s": fixed_s, "per_seq_s": per_seq_s, "per_prefill_token_s": per_prefill_token_s},
    }


def _errors(pred: dict[str, Any], meas: dict[str, Any]) -> dict[str, float | None]:
    """|predicted − measured| / measured of TTFT p50/p90 and TPOT p50."""
    pairs = {
        "ttft_p50": (pred["ttft_p50_s"], meas["ttft"]["p50"]),
        "ttft_p90": (pred["ttft_p90_s"], meas["ttft"]["p90"]),
        "tpot_p50": (pred["tpot_s"], meas["tpot"]["p50"]),
    }
    return {k: abs(p - m) / m if m and p is not None and math.isfinite(p) else None for k, (p, m) in pairs.items()}


def build_load_report(
    plan: dict[str, Any],
    result: dict[str, Any],
    load: LoadSpec,
    *,
    check: dict[str, Any] | None,
    device: str,
    plan_id: str | None,
) -> dict[str, Any]:
    """The load run's report (see the module docstring)."""
    ranks = sorted((r for r in result["ranks"] if r.get("tp_rank", 0) == 0), key=lambda r: r["stage"])
    timeline = ranks[0]["load"]["timeline"]
    ttft, tpot = measured_latencies(timeline)
    measured = {"ttft": _pct(ttft), "tpot": _pct(tpot), "requests": len(ttft)}
    steps = [r["load"]["steps"] for r in ranks]
    pp = len(ranks)
    fit = fit_step_cost(steps, same_host=len({r["host"] for r in ranks}) == 1)
    per_tok = fit.per_prefill_token_s + fit.per_entry_s * math.ceil(load.prompt_tokens / load.token_budget) / max(
        1, load.prompt_tokens
    )
    calibrated = predict(pp, load, fit.fixed_s, fit.per_entry_s, per_tok)
    from_plan = predict(pp, load, *_plan_cost(plan))
    notes = [
        "each sequence of a step runs its own forward (no ragged batching): a step costs fixed + per entry + "
        "per prefill token, the form the prediction assumes",
        "calibrated: the stage coefficients are fitted to this run's own steps (the same run is then "
        "predicted), so the error measures the queueing model, not the cost model",
    ]
    if not same_device(plan, device):
        notes.append(f"the plan's stage times are for {plan['cluster']['gpu']}; this run used {device} ranks")
    return {
        "kind": "load",
        "plan_id": plan_id,
        "model": plan["model"]["name"],
        **run_header(plan, result, device),
        "load": load.to_dict(),
        "measured": measured,
        "fit": asdict(fit),
        "predicted": {"plan": from_plan, "calibrated": calibrated},
        "error": {"plan": _errors(from_plan, measured), "calibrated": _errors(calibrated, measured)},
        "stages": [
            {
                "index": r["stage"],
                "rank": r["rank"],
                "steps": len(r["load"]["steps"]),
                "max_step_tokens": max((x["decode"] + x["prefill_tokens"] for x in r["load"]["steps"]), default=0),
                "compute_s": sum(x["compute_s"] for x in r["load"]["steps"]),
                "wait_s": r["load"]["wait_s"],
                "bytes_sent": r["load"]["bytes_sent"],
                "wall_s": r["load"]["wall_s"],
            }
            for r in ranks
        ],
        "requests": [
            {k: v for k, v in t.items() if k != "tokens"} | {"ttft_s": a} for t, a in zip(timeline, ttft, strict=False)
        ],
        "check": check,
        "notes": notes,
    }


def load_rows(report: dict[str, Any], run_id: str) -> list[dict[str, Any]]:
    """Store rows of a load run (the measurements table, no schema change): one ``ttft`` row and,
    for requests of ≥ 2 output tokens, one ``tpot`` row per request, on the last stage.

    ``compute_s`` is the request's TTFT (or TPOT) in seconds, ``wait_s`` its queueing before
    admission (TTFT rows), ``tokens`` its prompt (TTFT) or decoded (TPOT) tokens,
    ``micro_batch_size`` the engine's most running sequences; ``run_id`` groups the run's rows.
    """
    last = len(report["stages"]) - 1
    seqs = int(report["load"]["max_seqs"])
    rows = []
    for r in report["requests"]:
        times = r["token_times_s"]
        if not times:
            continue
        admitted = r["admitted_s"] if r["admitted_s"] is not None else r["arrival_s"]
        base = {"stage": last, "bytes_sent": 0, "peak_bytes": None, "micro_batch_size": seqs, "run_id": run_id}
        rows.append(
            base
            | {
                "phase": "ttft",
                "compute_s": times[0] - r["arrival_s"],
                "wait_s": max(0.0, admitted - r["arrival_s"]),
                "tokens": int(r["prompt_tokens"]),
            }
        )
        if len(times) > 1:
            rows.append(
                base
                | {
                    "phase": "tpot",
                    "compute_s": (times[-1] - times[0]) / (len(times) - 1),
                    "wait_s": 0.0,
                    "tokens": len(times) - 1,
                }
            )
    return rows


def print_load_report(report: dict[str, Any], console: Any) -> None:
    """Readable summary: the check, then measured vs predicted TTFT/TPOT."""
    ld, ms = report["load"], report["measured"]
    console.print(
        f"{run_title(report)}: {ms['requests']} requests at {ld['rate']:g}/s, "
        f"prompt {ld['prompt_tokens']}, output {ld['output_tokens']} tokens, token budget {ld['token_budget']}, "
        f"≤ {ld['max_seqs']} sequences, {ld['groups']} step(s) in flight",
        highlight=False,
    )
    chk = report["check"]
    if chk is not None:
        verdict = "[green]PASSED[/]" if chk["passed"] else "[red]FAILED[/]"
        console.print(
            f"correctness vs unsplit model: {verdict} — {chk['token_mismatches']}/{chk['tokens_total']} tokens "
            f"differ, logits max |diff| {chk['logits_max_abs_diff']:.2e} (tolerance {chk['tolerance']:.0e})",
            highlight=False,
        )
    f = report["fit"]
    console.print(
        f"step fit ({f['steps']} steps): {f['fixed_s'] * 1e3:.3f} ms + {f['per_entry_s'] * 1e3:.3f} ms/sequence + "
        f"{f['per_prefill_token_s'] * 1e6:.2f} µs/prefill token (median |error| {f['median_rel_error']:.1%}); "
        f"hop between stages {f['hop_s'] * 1e3:.2f} ms",
        highlight=False,
    )
    pr = report["predicted"]
    for label, key in (("TTFT p50", "p50"), ("TTFT p90", "p90")):
        m = ms["ttft"][key]
        console.print(
            f"{label}: measured {_ms(m)}, predicted {_ms(pr['calibrated'][f'ttft_{key}_s'])} calibrated / "
            f"{_ms(pr['plan'][f'ttft_{key}_s'])} from the plan's stage times",
            highlight=False,
        )
    console.print(
        f"TPOT p50: measured {_ms(ms['tpot']['p50'])} (p90 {_ms(ms['tpot']['p90'])}), predicted "
        f"{_ms(pr['calibrated']['tpot_s'])} calibrated / {_ms(pr['plan']['tpot_s'])} from the plan; "
        f"utilisation {pr['calibrated']['utilisation']:.2f}",
        highlight=False,
    )
    for n in report["notes"]:
        console.print(f"note: {n}", highlight=False)


def _ms(x: float | None) -> str:
    return f"{x * 1e3:.2f} ms" if x is not None and math.isfinite(x) else "-"

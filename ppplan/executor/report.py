"""Predicted vs measured, per stage and phase, from a plan and a run's ``result.json``.

Units follow the plan: ``decode_ms`` is one decode step of one micro-batch on a stage (measured:
the median over the run's steps), ``prefill_ms`` is the prefill of one prompt (measured: the
median micro-batch prefill divided by the micro-batch size). ``wait`` is time blocked in receives
(the pipeline bubble plus transfer), ``bytes_sent`` what the stage sent on, ``peak_bytes`` as
described in :class:`ppplan.executor.schedule.PhaseStats`.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["build_report", "measurement_rows", "print_report", "run_header", "run_title", "same_device", "store_rows"]


def _rel(measured: float, predicted: float) -> float | None:
    return measured / predicted - 1.0 if predicted > 0 else None


def same_device(plan: dict[str, Any], device: str) -> bool:
    """Whether the run's ranks (``device``) are the kind the plan predicts for (CPU or a GPU)."""
    return (plan["cluster"]["gpu"] == "CPU") == (device == "cpu")


def run_header(plan: dict[str, Any], result: dict[str, Any], device: str) -> dict[str, Any]:
    """What a run report says of the plan's GPU, the run's ranks and the cut they ran."""
    return {
        "plan_gpu": plan["cluster"]["gpu"],
        "device": device,
        "backend": result["backend"],
        "world_size": result["world_size"],
        "torch": result["torch"],
        "partition": plan["partition"],
        "degrees": plan["degrees"],
    }


def run_title(report: dict[str, Any]) -> str:
    """A report's first line up to the workload: model, partition, ranks and backend (rich markup)."""
    return (
        f"[bold]{report['model']}[/] partition {report['partition']} on {report['world_size']} "
        f"{report['device']} rank(s) ({report['backend']})"
    )


def build_report(
    plan: dict[str, Any],
    result: dict[str, Any],
    *,
    workload_note: str,
    check: dict[str, Any] | None,
    device: str,
    plan_id: str | None,
) -> dict[str, Any]:
    """The run report: per-stage predicted vs measured, headline figures and the check."""
    wl = result["workload"]
    b, M, N = wl["micro_batch_size"], wl["micro_batches"], wl["new_tokens"]
    ranks = {r["stage"]: r for r in result["ranks"] if r.get("tp_rank", 0) == 0}
    plan_wl = plan["workload"]
    same_workload = (
        plan_wl["prompt_tokens"] == wl["prompt_tokens"]
        and plan_wl["output_tokens"] == wl["new_tokens"]
        and plan["degrees"]["micro_batch_size"] == b
        and plan["degrees"]["micro_batches"] == M
    )
    same_kind = same_device(plan, device)
    stages = []
    for st in plan["stages"]:
        r = ranks[st["index"]]
        pre, dec = r["phases"]["prefill"], r["phases"]["decode"]
        pred = st["times"]
        meas_decode_ms = dec["median_step_s"] * 1e3
        meas_prefill_ms = pre["median_step_s"] * 1e3 / b
        stages.append(
            {
                "index": st["index"],
                "rank": r["rank"],
                "host": r["host"],
                "device": r["device"],
                "modules": st["modules"],
                "decoder_layers": st["decoder_layers"],
                "predicted": {
                    "decode_ms": pred["decode_ms"],
                    "prefill_ms": pred["prefill_ms"],
                    "busy_ms": pred["busy_ms"],
                },
                "measured": {
                    "decode_ms": meas_decode_ms,
                    "prefill_ms": meas_prefill_ms,
                    "weight_bytes": r["weight_bytes"],
                    "max_rss_bytes": r["max_rss_bytes"],
                    "prefill": pre,
                    "decode": dec,
                },
                "error": {
                    "decode": _rel(meas_decode_ms, pred["decode_ms"]),
                    "prefill": _rel(meas_prefill_ms, pred["prefill_ms"]),
                },
            }
        )
    last = max(ranks)
    dec_wall = ranks[last]["phases"]["decode"]["wall_s"]
    pre_wall = ranks[last]["phases"]["prefill"]["wall_s"]
    measured = {
        "prefill_wall_s": pre_wall,
        "decode_wall_s": dec_wall,
        "tpot_ms": dec_wall / (N - 1) * 1e3 if N > 1 else None,
        "decode_tokens_per_s": M * b * (N - 1) / dec_wall if N > 1 and dec_wall > 0 else None,
    }
    notes = [f"workload: {workload_note}"]
    notes.extend(sorted({n for r in result["ranks"] for n in r.get("tp_notes", [])}))
    ep = [r["ep_dispatch"] for r in result["ranks"] if "ep_dispatch" in r]
    if ep:
        total, remote = sum(d["assignments"] for d in ep), sum(d["remote"] for d in ep)
        notes.append(
            f"expert dispatch (warm-up included): {remote} of {total} (token, expert) assignments went to "
            "another EP rank"
        )
    if not same_kind:
        notes.append(
            f"the plan predicts {plan['cluster']['gpu']} times; this run used {device} ranks, so the "
            "comparison checks the cut, not the cost model"
        )
    elif not same_workload:
        notes.append("the run's workload differs from the plan's: predicted times are for the plan's workload")
    return {
        "plan_id": plan_id,
        "model": plan["model"]["name"],
        "model_source": plan["model_source"],
        "config_hash": plan["model"]["config_hash"],
        **run_header(plan, result, device),
        "workload": wl,
        "comparable": same_kind and same_workload,
        "predicted": {"tpot_ms": plan["metrics"]["tpot_ms"], "ttft_ms": plan["metrics"]["ttft_ms"]},
        "measured": measured,
        "stages": stages,
        "check": check,
        "notes": notes,
        "ep_dispatch": {"assignments": total, "remote": remote} if ep else None,
    }


def measurement_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per stage and phase (what the store keeps): seconds, bytes, predicted and measured ms."""
    rows = []
    for st in report["stages"]:
        for phase in ("prefill", "decode"):
            ph = st["measured"][phase]
            rows.append(
                {
                    "stage": st["index"],
                    "phase": phase,
                    "rank": st["rank"],
                    "host": st["host"],
                    "device": report["device"],
                    "backend": report["backend"],
                    "compute_s": ph["compute_s"],
                    "steps": ph["steps"],
                    "median_step_s": ph["median_step_s"],
                    "wait_s": ph["wait_s"],
                    "bytes_sent": ph["bytes_sent"],
                    "peak_bytes": ph["peak_bytes"],
                    "wall_s": ph["wall_s"],
                    "predicted_ms": st["predicted"][f"{phase}_ms"],
                    "measured_ms": st["measured"][f"{phase}_ms"],
                    "workload": report["workload"],
                    "comparable": report["comparable"],
                    "check_passed": (report["check"] or {}).get("passed"),
                }
            )
    return rows


def print_report(report: dict[str, Any], console: Console) -> None:
    """Readable summary: the check, then a predicted-vs-measured table per stage."""
    wl = report["workload"]
    console.print(
        f"{run_title(report)}; {wl['micro_batches']} micro-batch(es) × "
        f"{wl['micro_batch_size']} sequences, prompt {wl['prompt_tokens']}, {wl['new_tokens']} new tokens",
        highlight=False,
    )
    chk = report["check"]
    if chk is not None:
        verdict = "[green]PASSED[/]" if chk["passed"] else "[red]FAILED[/]"
        console.print(
            f"correctness vs unsplit model: {verdict} — tokens identical: {chk['tokens_equal']} "
            f"({chk['token_mismatches']}/{chk['tokens_total']} differ), logits max |diff| "
            f"{chk['logits_max_abs_diff']:.2e} (tolerance {chk['tolerance']:.0e}, {chk['dtype']})",
            highlight=False,
        )
        if chk.get("diverged_at_near_tie") or chk.get("diverged_otherwise"):
            console.print(
                f"  sequences diverging: {chk['diverged_at_near_tie']} at a near-tie (accepted), "
                f"{chk['diverged_otherwise']} otherwise; first at decode step "
                f"{chk['first_divergence_step']}; logits compared up to each divergence "
                f"({chk['compared_steps']} sequence-steps)",
                highlight=False,
            )
    t = Table(title="stages: predicted vs measured (decode: one micro-batch step; prefill: per prompt)")
    for c in (
        "stage",
        "rank",
        "layers",
        "decode ms pred",
        "decode ms meas",
        "err",
        "prefill ms pred",
        "prefill ms meas",
        "err",
        "wait s pre/dec",
        "sent KiB",
        "peak MiB",
    ):
        t.add_column(c, justify="right")
    for st in report["stages"]:
        m, p, e = st["measured"], st["predicted"], st["error"]
        fmt = lambda x: f"{x:+.0%}" if x is not None else "-"  # noqa: E731
        t.add_row(
            str(st["index"]),
            str(st["rank"]),
            f"{st['decoder_layers'][0]}–{st['decoder_layers'][1]}",
            f"{p['decode_ms']:.3f}",
            f"{m['decode_ms']:.3f}",
            fmt(e["decode"]),
            f"{p['prefill_ms']:.3f}",
            f"{m['prefill_ms']:.3f}",
            fmt(e["prefill"]),
            f"{m['prefill']['wait_s']:.3f}/{m['decode']['wait_s']:.3f}",
            f"{(m['prefill']['bytes_sent'] + m['decode']['bytes_sent']) / 1024:.1f}",
            f"{max(m['prefill']['peak_bytes'], m['decode']['peak_bytes']) / 2**20:.1f}",
        )
    console.print(t)
    ms = report["measured"]
    if ms["tpot_ms"] is not None:
        console.print(
            f"measured TPOT {ms['tpot_ms']:.2f} ms (predicted {report['predicted']['tpot_ms']:.3f} ms), "
            f"decode {ms['decode_tokens_per_s']:.0f} tok/s, prefill wall {ms['prefill_wall_s'] * 1e3:.1f} ms",
            highlight=False,
        )
    for n in report["notes"]:
        console.print(f"note: {n}", highlight=False)


def store_rows(report: dict[str, Any], run_id: str) -> list[dict[str, Any]]:
    """One MeasurementCreate row per stage and phase, for one representative micro-batch step.

    ``compute_s`` is the median step (prefill: one micro-batch of ``micro_batch_size`` prompts;
    decode: one token for each sequence of a micro-batch), ``tokens`` the tokens of that step,
    ``wait_s`` and ``bytes_sent`` the phase's totals divided by its steps, ``peak_bytes`` the
    phase's peak (see :class:`ppplan.executor.schedule.PhaseStats`).
    """
    wl = report["workload"]
    b, P = wl["micro_batch_size"], wl["prompt_tokens"]
    rows = []
    for st in report["stages"]:
        for phase in ("prefill", "decode"):
            ph = st["measured"][phase]
            steps = max(1, ph["steps"])
            rows.append(
                {
                    "stage": st["index"],
                    "phase": phase,
                    "compute_s": ph["median_step_s"],
                    "wait_s": ph["wait_s"] / steps,
                    "bytes_sent": int(ph["bytes_sent"] / steps),
                    "peak_bytes": int(ph["peak_bytes"]),
                    "tokens": b * P if phase == "prefill" else b,
                    "micro_batch_size": b,
                    "run_id": run_id,
                }
            )
    return rows

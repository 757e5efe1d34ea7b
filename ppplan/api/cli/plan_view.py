"""A plan in the terminal: a header that states the workload and SLOs, compact tables that fit 100
columns (``--wide``: every column), and a missed SLO in red that cannot be overlooked."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from ppplan.api.cli.common import console

__all__ = ["print_plan"]

WIDTH = 100
"""Columns the default output fits in."""


def _opt_ms(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _degrees(g: dict[str, Any]) -> str:
    if g.get("ep", 1) > 1:  # attention TP × DP ranks per stage, the routed experts spread over all of them
        return f"TP{g['tp']}×DP{g.get('attention_dp', 1)}(EP{g['ep']})×PP{g['pp']}×{g['replicas']}"
    return f"TP{g['tp']}×PP{g['pp']}×{g['replicas']}"


def _sequences(g: dict[str, Any]) -> int:
    return int(g["micro_batches"]) * int(g["micro_batch_size"])


def _header(d: dict[str, Any], defaults: list[str]) -> None:
    deg, m, c, w = d["degrees"], d["metrics"], d["cluster"], d["workload"]
    req = d.get("request", {})
    groups = c.get("groups") or []
    gpus = (
        " + ".join(f"{g.get('count')}× {g.get('gpu')}" for g in groups)
        if len(groups) > 1
        else f"{c['count']}× {c['gpu']}"
    )
    console.print(
        f"[bold]{d['model']['name']}[/] ({d['weight_dtype']} weights, {d['kv_dtype']} KV) on "
        f"{gpus} ({c['nodes']} node(s)), objective {d['objective']}"
    )
    sd = lambda k: f"±{w[k]:.0f}" if w.get(k) else ""  # noqa: E731
    rate = w.get("request_rate")
    rate_text = f"{rate:.3g} req/s ({w.get('request_rate_source', 'given')})" if rate else "-"
    console.print(
        f"workload: prompt {w['prompt_tokens']}{sd('prompt_tokens_sd')} tok, output "
        f"{w['output_tokens']}{sd('output_tokens_sd')} tok, max-model-len {w['context']}, "
        f"{w.get('token_budget') or req.get('prefill_chunk_tokens', '-')} tok/step, rate {rate_text}",
        highlight=False,
    )
    if defaults:
        console.print(f"  defaults used: {' '.join(defaults)}", highlight=False, style="dim")
    src = w.get("concurrency_source", "pinned")
    console.print(
        f"plan: {_degrees(deg)} = {deg['gpus_used']} GPUs; batch {_sequences(deg)} sequences per replica "
        f"({src}) as {deg['micro_batches']} micro-batch(es) of {deg['micro_batch_size']}; "
        f"partition {d['partition']}",
        highlight=False,
    )
    per_user = m.get("tokens_per_s_per_user") or (1000 / m["tpot_ms"] if m["tpot_ms"] else 0)
    console.print(
        f"output {m['throughput_tokens_per_s']:,.0f} tok/s ({m['throughput_per_gpu']:,.0f} per GPU, "
        f"{per_user:.1f} per user); TPOT {m['tpot_ms']:.2f} ms; TTFT idle {m['ttft_ms']:,.0f} ms, "
        f"p50 {_opt_ms(m.get('ttft_p50_ms'))} ms, p90 {_opt_ms(m.get('ttft_p90_ms'))} ms",
        highlight=False,
    )
    console.print(
        f"KV: {m['kv_capacity_tokens']:,} tokens per replica (≈{m['max_concurrency']:.0f} sequences of "
        f"{w.get('kv_tokens_per_sequence') or w['context']} tokens); bubble "
        f"{d['schedule']['bubble_fraction']:.0%}",
        highlight=False,
    )
    _slo_line(d)


def _slo_line(d: dict[str, Any]) -> None:
    req, m = d.get("request", {}), d["metrics"]
    parts = []
    if req.get("max_tpot_ms") is not None:
        ok = m["tpot_ms"] <= req["max_tpot_ms"]
        parts.append(f"TPOT {m['tpot_ms']:.1f} {'≤' if ok else '>'} {req['max_tpot_ms']:g} ms")
    if req.get("max_ttft_ms") is not None:
        p90 = m.get("ttft_p90_ms")
        ok = p90 is not None and p90 <= req["max_ttft_ms"]
        parts.append(f"TTFT p90 {_opt_ms(p90)} {'≤' if ok else '>'} {req['max_ttft_ms']:g} ms")
    if m["slo_met"]:
        if parts:
            console.print(f"SLO met: {'; '.join(parts)}", style="green", highlight=False)
        return
    console.print(
        f"SLO MISSED: {'; '.join(parts) or 'see the notes'} (exit status 3)",
        style="bold red",
        highlight=False,
    )


def _stages(d: dict[str, Any], wide: bool) -> Table:
    t = Table(title="stages (per GPU; GiB, ms)", title_justify="left")
    mixed = len(d["cluster"].get("groups") or []) > 1
    compact = mixed and not wide  # room for the GPU column within 100 columns
    cols = ["stage", "layers", "n", "E/H"] + (["GPU@node"] if mixed else [])
    cols += ["busy", "decode"] + ([] if compact else ["prefill"]) + ["weights", "KV"]
    cols += ([] if compact else ["work"]) + ["total", "free"] + (["KV tokens"] if wide else [])
    for col in cols:
        t.add_column(col, justify="right")
    for s in d["stages"]:
        mem, tm = s["memory"], s["times"]
        row = [
            str(s["index"]),
            f"{s['decoder_layers'][0]}–{s['decoder_layers'][1]}",
            str(s["num_decoder_layers"]),
            (("E" if s["has_embedding"] else "") + ("H" if s["has_lm_head"] else "")) or "-",
            *([f"{str(s.get('gpu') or '').split('-')[0]}@{s['node']}"] if mixed else []),
            f"{tm['busy_ms']:.3f}",
            f"{tm['decode_ms']:.3f}",
            *([] if compact else [f"{tm['prefill_ms']:.1f}"]),
            f"{mem['weights_gib']:.1f}",
            f"{mem['kv_cache_gib']:.1f}",
            *([] if compact else [f"{mem['workspace_gib']:.1f}"]),
            f"{mem['total_gib']:.1f}/{mem['limit_gib']:.0f}",
            f"{mem['free_gib']:.1f}",
        ]
        row += [f"{s['kv_capacity_tokens']:,}"] if wide else []
        t.add_row(*row)
    return t


def _baselines(d: dict[str, Any], wide: bool) -> Table:
    b = Table(title="engine default cuts, same degrees (output tok/s)", title_justify="left")
    for col in ("engine", "cut", "fits", "tok/s", "gain", "KV gain"):
        b.add_column(col, justify="right", overflow="fold")
    for x in d["baselines"]:
        reason = x["reason"] or ""
        fits = "yes" if x["feasible"] else ("no: " + reason if wide else "no (OOM)")
        cut = ",".join(map(str, x["partition"]))
        b.add_row(
            x["engine"],
            cut if wide or len(cut) <= 24 else cut[:23] + "…",
            fits,
            f"{x['throughput_tokens_per_s']:,.0f}" if x["throughput_tokens_per_s"] else "-",
            f"{x['throughput_gain']:+.1%}" if x["throughput_gain"] is not None else "-",
            f"{x['kv_capacity_gain']:+.1%}" if x["kv_capacity_gain"] is not None else "-",
        )
    return b


def _points(title: str, pts: list[dict[str, Any]], mark: bool) -> Table:
    r = Table(title=title, title_justify="left")
    for col in ("", "degrees", "GPUs", "batch", "tok/s/GPU", "tok/s/user", "TPOT ms", "TTFT p90", "SLO"):
        r.add_column(col, justify="right")
    for x in pts:
        g = x["degrees"]
        per_user = x.get("tokens_per_s_per_user") or (1000 / x["tpot_ms"] if x["tpot_ms"] else 0)
        r.add_row(
            "▶" if mark and x.get("chosen") else "",
            _degrees(g),
            str(g["gpus_used"]),
            str(_sequences(g)),
            f"{x['throughput_per_gpu']:,.0f}",
            f"{per_user:.1f}",
            f"{x['tpot_ms']:.2f}",
            _opt_ms(x.get("ttft_p90_ms")),
            "yes" if x["slo_met"] else "[red]no[/]",
        )
    return r


def _around_chosen(points: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """At most ``n`` consecutive points of the front, the plan's among them."""
    at = next((i for i, x in enumerate(points) if x.get("chosen")), 0)
    start = max(0, min(at - n // 2, len(points) - n))
    return points[start : start + n]


def print_plan(
    d: dict[str, Any], plan_id: str | None = None, *, wide: bool = False, defaults: list[str] | None = None
) -> None:
    """A readable summary of a Plan JSON dict, 100 columns wide unless ``wide``; ``defaults`` lists
    the workload options the user left at their defaults (printed in the header)."""
    width = None if wide else min(WIDTH, console.width) if console.is_terminal else WIDTH
    prev = console.width
    console.width = width or max(prev, 160)
    try:
        _header(d, defaults or [])
        console.print(_stages(d, wide))
        console.print(_baselines(d, wide))
        if d["runner_ups"]:
            console.print(_points("runner-ups (best batch of other degrees)", d["runner_ups"], mark=False))
        if d.get("pareto"):
            shown = d["pareto"] if wide else _around_chosen(d["pareto"], 8)
            console.print(_points("Pareto front (▶ = this plan)", shown, mark=True))
        pv, m = d["provenance"], d["metrics"]
        console.print(
            f"predicted by {m['predicted_by']}; solver {pv['solver']}, optimal={pv['optimal']} "
            f"(gap {pv.get('gap', 0.0):.2%}), {pv['configs_evaluated']} cuts solved in "
            f"{pv['solve_time_ms']:.1f} ms",
            highlight=False,
        )
        for n in d.get("notes", []):
            console.print(f"note: {n}", highlight=False)
        if plan_id:
            console.print(f"plan id: [bold]{plan_id}[/]")
    finally:
        console.width = prev

"""Accuracy of the shape-aware cost model against measured kernel tables, on held-out shapes.

For each GPU kind and kernel kind with data: the median and p90 of |predicted − measured| / measured
over the shapes the committed fit never saw (GEMM: unseen (N, K) weight shapes; attention and MoE:
unseen head/expert configurations; collectives: the message sizes between the committed curve's
points), next to a noise floor (GEMM: rows M and M + 1, whose work differs by < 7 %; collectives: the
same NCCL operation measured with two NCCL versions). Then the issue's done-when comparison:
Llama-3.1-70B bf16 on 8×H100, one decoder layer's decode step at 32 sequences (ISL 4000, OSL 1000:
4500 cached tokens on average), ppplan vs the sum of the measured kernels, and the TP1×PP8 / TP8
output tokens/s per GPU by ppplan's plans and by the kernel-table composition.

Needs the optional extra for the tables (``pip install 'ppplan[kerneldb]'``); without it, it says
so and prints what the committed data allows (the fit errors recorded at fit time, ppplan's side of
the comparison).

    python3 benchmarks/bench_costmodel.py [--engine vllm] [--gpus H100-SXM-80GB,H200-141GB]
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from typing import Any

import numpy as np

from ppplan.core.collectives import collectives_for
from ppplan.core.costmodel import CostModel
from ppplan.core.errors import PpplanError
from ppplan.core.gpus import get_gpu
from ppplan.core.kernels import decode_attention_time, gemm_time, kernel_fit_for, prefill_attention_time
from ppplan.core.layer_kernels import ELEMENTWISE_KERNELS
from ppplan.partitioner.request import PlanRequest
from ppplan.profiler.analytic import analytic_profile, model_spec
from ppplan.profiler.configs import load_model_config
from ppplan.profiler.resolve import plan_request

TARGET = {"gemm_bf16": 0.10, "decode_attention": 0.10, "prefill_attention": 0.10, "moe": 0.20}
COLL_TARGET = 0.15
BATCH, ISL, OSL = 32, 4000, 1000
CONTEXT = ISL + OSL // 2


def _stats(pred: Any, meas: np.ndarray) -> tuple[float, float, int]:
    e = np.abs(np.asarray(pred) / meas - 1)
    return float(np.median(e)), float(np.percentile(e, 90)), len(e)


def _row(gpu: str, kind: str, st: tuple[float, float, int], noise: str, target: float) -> None:
    med, p90, n = st
    ok = "ok" if med <= target else "MISS"
    print(f"{gpu:15s} {kind:22s} {med * 100:7.1f}% {p90 * 100:7.1f}% {n:7d}  {noise:>8s}  ≤{target * 100:.0f}% {ok}")


def _gemm_noise(df: Any) -> str:
    d = df[df["m"] >= 16]
    a = d.set_index(["m", "n", "k"])["seconds"]
    ratios = [abs(a[(m + 1, n, k)] / a[(m, n, k)] - 1) for (m, n, k) in a.index if (m + 1, n, k) in a.index]
    return f"{np.median(ratios) * 100:.1f}%" if ratios else "n/a"


def kernel_rows(K: Any, gpu: str, engine: str) -> None:
    from ppplan.profiler import kerneldb_fit as F  # lazy: needs the optional extra's tables

    spec = get_gpu(gpu)
    t = K.load_tables(gpu, engine)
    fit = kernel_fit_for(spec.name, engine)
    assert fit is not None
    peak, bw = spec.peak_flops("bf16"), spec.hbm_bw
    g = K.gemm_rows(t, "bf16")
    noise = _gemm_noise(g)
    h = g[K.held_out(g["n"], g["k"])]
    m, n, k, s = (h[c].to_numpy(float) for c in ("m", "n", "k", "seconds"))
    pred = gemm_time(m, n, k, fit.gemm["bf16"], peak=peak, bw=bw, sms=spec.sms or 100, in_bytes=2.0)
    _row(spec.name, "gemm bf16", _stats(pred, s), noise, TARGET["gemm_bf16"])
    d = K.decode_rows(t)
    d = d[K.attention_held_out(d)]
    cols = ("batch_size", "kv_bytes", "flops", "num_key_value_heads", "seconds")
    b, kvb, fl, kvh, s = (d[c].to_numpy(float) for c in cols)
    pred = decode_attention_time(b, kvb, fl, kvh, fit.attention, peak=peak, bw=bw)
    _row(spec.name, "decode attention", _stats(pred, s), "n/a", TARGET["decode_attention"])
    p = K.prefill_rows(t)
    p = p[K.attention_held_out(p)]
    isl, fl, hd, s, nb = (p[c].to_numpy(float) for c in ("isl", "flops", "head_dim", "seconds", "nbytes"))
    pred = prefill_attention_time(isl, fl, hd, fit.attention, peak=peak, nbytes=nb, bw=bw)
    _row(spec.name, "prefill attention", _stats(pred, s), "n/a", TARGET["prefill_attention"])
    mo = F.moe_rows(t)
    if mo is not None and fit.moe is not None:
        mo = mo[F.moe_held_out(mo)]
        if not len(mo):
            print(f"{spec.name:15s} moe: every measured shape was used in the fit (none held out)")
            return collective_rows(K, t, spec.name, engine)
        pred = F.predict_moe_rows(mo, fit.moe, fit.gemm["bf16"], spec)
        _row(spec.name, "moe (bf16 fused)", _stats(pred, mo["seconds"].to_numpy(float)), "n/a", TARGET["moe"])
    collective_rows(K, t, spec.name, engine)


def collective_rows(K: Any, t: Any, gpu: str, engine: str) -> None:
    from ppplan.profiler import kerneldb_fit as F  # lazy: needs the optional extra's tables

    coll = collectives_for(gpu, engine)
    if coll is None:
        return
    held = F.collective_curves(t, keep="held_out")
    noise = _nccl_noise(K, t)
    for op, per in held["nccl"].items():
        pts = [(int(gp), b, sec) for gp, rows in per.items() for b, sec in rows]
        if not pts:
            continue
        pred = np.array([float(coll.op_time(op, gp, b)) for gp, b, _ in pts])
        _row(gpu, f"nccl {op}", _stats(pred, np.array([x[2] for x in pts])), noise, COLL_TARGET)
    for mode, per in held["custom_allreduce"].items():
        pts = [(int(gp), b, sec) for gp, rows in per.items() for b, sec in rows]
        curve = coll.custom.get(mode, {})
        pred = np.array([float(F._lookup_curve(_pts(curve[gp]), b)) for gp, b, _ in pts if gp in curve])
        meas = np.array([sec for gp, _, sec in pts if gp in curve])
        if len(meas):
            _row(gpu, f"{engine} custom AR {mode}", _stats(pred, meas), "n/a", COLL_TARGET)


def _pts(curve: Any) -> list[list[float]]:
    lb, lt = curve
    return [[float(np.exp(x)), float(np.exp(y))] for x, y in zip(lb, lt, strict=True)]


def _nccl_noise(K: Any, t: Any) -> str:
    """NCCL all-reduce measured under two NCCL versions of the same node: the run-to-run floor."""
    import pandas as pd  # lazy: a dependency of the optional extra

    base = K._root() / t.system / "comm" / "nccl"
    frames = [pd.read_parquet(p) for p in sorted(base.glob("*/nccl_perf.parquet"))]
    if len(frames) < 2:
        return "n/a"
    key = ["op_name", "nccl_dtype", "num_gpus", "message_size"]
    a = frames[-1].groupby(key)["latency"].median()
    b = frames[-2].groupby(key)["latency"].median()
    both = a.index.intersection(b.index)
    return f"{np.median(np.abs(a[both] / b[both] - 1)) * 100:.1f}%" if len(both) else "n/a"


def ppplan_layer(engine: str, tp: int) -> tuple[float, float]:
    """ppplan's decode time of one Llama-3.1-70B decoder layer at TP ``tp``: (all kernels, the
    kernels the tables measure: without the element-wise ones)."""
    prof = analytic_profile(model_spec(load_model_config("llama-3.1-70b")), "bf16", "bf16")
    cm = CostModel(prof, get_gpu("H100"), engine=engine)
    full = float(cm.unit_times(tp, "decode", BATCH, CONTEXT)[1])
    assert cm.kernels is not None
    g = cm.kernels.gemm["bf16"]
    ew = ELEMENTWISE_KERNELS * (g.floor_s + 3.0 * BATCH * 8192 * 2.0 / (cm.gpu.hbm_bw * g.eta_m))
    return full, full - ew


def plan_ratio(engine: str) -> tuple[float, float, float]:
    """(TP8 tokens/s per GPU, TP1×PP8 tokens/s per GPU, ratio) of ppplan's pinned plans."""
    got = []
    for tp, pp in ((8, 1), (1, 8)):
        req = PlanRequest(
            model="llama-3.1-70b",
            gpus="8xH100",
            tp=tp,
            pp=pp,
            prompt_tokens=ISL,
            output_tokens=OSL,
            concurrency=BATCH * pp,
            engine=engine,  # type: ignore[arg-type]
        )
        got.append(plan_request(req).metrics.throughput_per_gpu)
    return got[0], got[1], got[1] / got[0]


def done_when(K: Any | None, engine: str) -> None:
    print(f"\nLlama-3.1-70B bf16, 8×H100, decode step of one decoder layer, {BATCH} sequences, {CONTEXT} cached")
    full8, sub8 = ppplan_layer(engine, 8)
    _, sub1 = ppplan_layer(engine, 1)
    print(f"  ppplan TP8: {full8 * 1e6:.1f} µs per layer ({sub8 * 1e6:.1f} µs in the kernels the tables measure)")
    if K is not None:
        from ppplan.profiler import kerneldb_fit as F  # lazy: needs the optional extra's tables

        t = K.load_tables("H100", engine)
        shape = F.LayerShape(hidden=8192, heads=64, kv_heads=8, head_dim=128, inter=28672)
        c8 = F.compose_decode_layer(t, shape, 8, BATCH, CONTEXT)
        c1 = F.compose_decode_layer(t, shape, 1, BATCH, CONTEXT)
        parts = ", ".join(f"{k} {v * 1e6:.1f}" for k, v in c8.items() if k != "total")
        err = sub8 / c8["total"] - 1
        print(f"  measured kernel sum TP8: {c8['total'] * 1e6:.1f} µs ({parts})")
        verdict = "ok" if abs(err) <= 0.10 else "MISS"
        print(f"  ppplan vs measured (same kernels): {err * 100:+.1f}%  (target within ±10%: {verdict})")
        e1 = (sub1 / c1["total"] - 1) * 100
        print(f"  TP1: ppplan {sub1 * 1e6:.1f} µs vs measured {c1['total'] * 1e6:.1f} µs ({e1:+.1f}%)")
        table_ratio = f"{8 * c8['total'] / c1['total']:.2f}"
    else:
        table_ratio = "n/a (needs the tables)"
    layer_ratio = 8 * sub8 / sub1
    tp8, pp8, ratio = plan_ratio(engine)
    print("\nTP1×PP8 / TP8 output tokens/s per GPU (same 32 sequences per micro-batch, decoder layers only):")
    print(f"  kernel-table composition: {table_ratio}    ppplan layer times: {layer_ratio:.2f}")
    print(
        "  ppplan full plans (pinned, prefill amortised, head/embedding, sends): "
        f"TP8 {tp8:.1f}, TP1×PP8 {pp8:.1f} tok/s/GPU, ratio {ratio:.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="vllm", choices=("vllm", "sglang", "trtllm"))
    ap.add_argument("--gpus", default="H100-SXM-80GB,H200-141GB,A100-80GB,B200,L40S")
    args = ap.parse_args()
    try:
        from ppplan.profiler import kerneldb as K  # lazy: the benchmark runs without the extra too

        K.require_extra()
    except PpplanError as exc:
        print(f"kernel tables unavailable: {exc}")
        print("held-out accuracy needs the tables; the fit errors recorded with the committed data (training shapes):")
        data = json.loads((resources.files("ppplan.core") / "data" / "kernels.json").read_text())
        for gpu, entry in data["gpus"].items():
            errs = entry["engines"].get(args.engine, {}).get("fit_error", {})
            print(f"  {gpu:15s} " + ", ".join(f"{k} {v * 100:.1f}%" for k, v in errs.items()))
        done_when(None, args.engine)
        return
    print(f"held-out |pred − meas| / meas, engine {args.engine} (aiconfigurator-core tables)")
    print(f"{'gpu':15s} {'kernel':22s} {'median':>8s} {'p90':>8s} {'shapes':>7s}  {'noise':>8s}  target")
    for gpu in args.gpus.split(","):
        try:
            kernel_rows(K, gpu, args.engine)
        except PpplanError as exc:
            print(f"{gpu:15s} skipped: {exc}")
    done_when(K, args.engine)


if __name__ == "__main__":
    main()

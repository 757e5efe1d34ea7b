"""Fitting the shape-aware coefficients to the whole kernel database, composing a layer from the
tables, and the ``--kernel-db aiconfigurator`` profile source (see :mod:`ppplan.profiler.kerneldb`)."""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ppplan.core.errors import PpplanError
from ppplan.core.gpus import GPUSpec, get_gpu
from ppplan.core.kernels import GemmFit, MoeFit, moe_time
from ppplan.profiler.kerneldb import (
    DIST,
    EAGER_FLOOR_S,
    ENGINES,
    TABLE_OF_GPU,
    KernelTables,
    decode_rows,
    fit_attention,
    fit_gemm,
    fit_least_squares,
    gemm_rows,
    held_out,
    load_tables,
    log_error,
    main_kernel,
    rows_where,
)

#: catalog kinds without tables of their own that use another memory variant's (efficiencies are shares
#: of each kind's own datasheet figures, and the links are the same)
SAME_SILICON = {"A100-40GB": "A100-80GB"}

__all__ = [
    "LayerShape",
    "collective_curves",
    "compose_decode_layer",
    "fit_engine",
    "kerneldb_profile",
    "table_lookup",
    "write_data",
]


# ---- MoE --------------------------------------------------------------------------------------------------
def moe_rows(t: KernelTables) -> Any:
    """Unquantised (bf16), balanced-routing fused-MoE rows, or None."""
    df = t.moe
    if df is None:
        return None
    df = rows_where(df, moe_dtype="bfloat16", distribution="balanced")
    df = main_kernel(df)
    return df if len(df) else None


def moe_held_out(df: Any) -> Any:
    """Held-out MoE shapes: by (hidden, inter, experts, top-k, TP, EP)."""
    return held_out(
        df["hidden_size"], df["inter_size"], df["num_experts"], df["topk"], df["moe_tp_size"], df["moe_ep_size"]
    )


def predict_moe_rows(df: Any, fit: MoeFit, gemm: GemmFit, spec: GPUSpec) -> Any:
    """Predicted seconds of MoE table rows (per GPU: experts / EP, top-k / EP, inter / TP)."""
    ep, tp = df["moe_ep_size"].to_numpy(float), df["moe_tp_size"].to_numpy(float)
    return moe_time(
        df["num_tokens"].to_numpy(float),
        df["num_experts"].to_numpy(float) / ep,
        df["topk"].to_numpy(float) / ep,
        df["hidden_size"].to_numpy(float),
        df["inter_size"].to_numpy(float) / tp,
        fit,
        gemm,
        peak=spec.peak_flops("bf16"),
        bw=spec.hbm_bw,
        sms=spec.sms or 100,
        in_bytes=2.0,
    )


def fit_moe(t: KernelTables, gemm: GemmFit) -> tuple[MoeFit, float] | None:
    """Fused-MoE coefficients on the non-held-out shapes (and the median error), or None without data."""
    df = moe_rows(t)
    if df is None:
        return None
    df = df[~moe_held_out(df)]
    s = df["seconds"].to_numpy(float)

    def moe(x: np.ndarray) -> MoeFit:  # floor in µs, per-token and per-expert costs in ns
        return MoeFit(
            eta_c=x[0], eta_m=x[1], floor_s=x[2] * 1e-6, overlap=x[3], token_s=x[4] * 1e-9, expert_s=x[5] * 1e-9
        )

    def pred(x: np.ndarray) -> Any:
        return predict_moe_rows(df, moe(x), gemm, t.gpu)

    x = fit_least_squares(
        lambda x: log_error(pred(x), s),
        [0.5, 0.6, 10.0, 0.3, 10.0, 100.0],
        [0.01, 0.01, 0.0, 0.0, 0.0, 0.0],
        [1.0, 1.2, 1e3, 1.0, 1e4, 1e5],
    )
    m = moe(x)
    fit = MoeFit(
        eta_c=float(m.eta_c),
        eta_m=float(m.eta_m),
        floor_s=float(m.floor_s),
        overlap=float(m.overlap),
        token_s=float(m.token_s),
        expert_s=float(m.expert_s),
    )
    return fit, float(np.median(np.abs(pred(x) / s - 1)))


# ---- collectives ------------------------------------------------------------------------------------------
def _curve(df: Any, element_bytes: float, keep: str) -> dict[str, list[list[float]]]:
    """{GPUs: [[bytes, seconds], ...]} with every second message size (``keep`` = 'fit') or the others
    ('held_out'): the committed curves interpolate over 4× size steps, the skipped sizes score them."""
    out: dict[str, list[list[float]]] = {}
    for g, part in df.groupby("num_gpus"):
        part = part.sort_values("message_size")
        sizes = sorted(part["message_size"].unique())
        if keep == "all":
            pick = set(sizes)
        elif keep == "fit":
            pick = set(sizes[0::2]) | {sizes[-1]}
        else:
            pick = set(sizes[1::2]) - {sizes[-1]}
        rows = part[part["message_size"].isin(pick)].groupby("message_size")["seconds"].median()
        out[str(int(g))] = [[float(m) * element_bytes, float(sec)] for m, sec in rows.items()]
    return out


def collective_curves(t: KernelTables, keep: str = "fit") -> dict[str, Any]:
    """Measured collective curves of the GPU kind (NCCL ops) and of the engine's custom all-reduce."""
    out: dict[str, Any] = {"nccl": {}, "custom_allreduce": {}}
    if t.nccl is not None:
        n = t.nccl[t.nccl["nccl_dtype"] == "half"]
        for op, part in n.groupby("op_name"):
            out["nccl"][str(op)] = _curve(part, 2.0, keep)
    if t.custom_allreduce is not None:
        col = "backend" if "backend" in t.custom_allreduce.columns else "kernel_source"
        for backend, part in t.custom_allreduce.groupby(col):
            mode = "eager" if "eager" in str(backend).lower() else "graph"
            out["custom_allreduce"][mode] = _curve(part, 2.0, keep)
    return out


# ---- the whole fit ----------------------------------------------------------------------------------------
@cache
def _fit_engine_cached(gpu: str, engine: str) -> str:
    return json.dumps(_fit_engine(gpu, engine))


def fit_engine(gpu: str, engine: str) -> dict[str, Any]:
    """Every kernel coefficient of ``gpu`` under ``engine`` (cached per process; see :func:`_fit_engine`)."""
    return dict(json.loads(_fit_engine_cached(get_gpu(gpu).name, engine)))


def _fit_engine(gpu: str, engine: str) -> dict[str, Any]:
    """Every kernel coefficient of ``gpu`` under ``engine`` in the JSON form of ``kernels.json``
    (see :func:`ppplan.core.kernels.kernel_fit_from_dict`), with the table versions and fit errors."""
    t = load_tables(gpu, engine)
    gemm: dict[str, Any] = {}
    err: dict[str, float] = {}
    for dtype in ("bf16", "fp8"):
        got = fit_gemm(t, dtype)
        if got is not None:
            gemm[dtype] = {k: float(v) if isinstance(v, float | np.floating) else v for k, v in _asdict(got[0]).items()}
            err[f"gemm_{dtype}"] = got[1]
    if "bf16" not in gemm:
        raise PpplanError("engine", engine, rule=f"{DIST} has no bf16 GEMM table for {t.gpu.name}")
    att, att_err = fit_attention(t)
    err.update(att_err)
    moe = fit_moe(t, GemmFit(**gemm["bf16"]))
    if moe is not None:
        err["moe"] = moe[1]
    return {
        "version": t.versions.get("gemm", ""),
        "table_versions": t.versions,
        "gemm": gemm,
        "attention": {
            k: ({str(a): b for a, b in v.items()} if isinstance(v, dict) else v) for k, v in _asdict(att).items()
        },
        "moe": _asdict(moe[0]) if moe else None,
        "eager_floor_s": EAGER_FLOOR_S,
        "fit_error": err,
    }


def _asdict(obj: Any) -> dict[str, Any]:
    return {f: getattr(obj, f) for f in obj.__slots__}


def _dist_version() -> str:
    from importlib.metadata import version  # lazy: only for the provenance line

    return version(DIST)


def write_data(out_dir: Path) -> tuple[Path, Path]:
    """Fit every covered GPU kind and engine and write ``kernels.json`` and ``collectives.json``."""
    src = (
        f"fitted by ppplan.profiler.kerneldb to the measured kernel tables of {DIST} {_dist_version()} "
        "(NVIDIA, Apache-2.0; systems/data/<gpu>/<kernel>/<engine>/<version>/*.parquet); held-out shapes excluded"
    )
    kernels: dict[str, Any] = {
        "schema_version": 1,
        "source": src,
        "fitted": _dt.date.today().isoformat(),
        "default_engine": "vllm",
        "same_silicon": SAME_SILICON,
        "gpus": {},
    }
    coll: dict[str, Any] = {
        "schema_version": 1,
        "source": f"measured latencies from {DIST} {_dist_version()} systems/data/<gpu>/comm: NCCL "
        "(nccl-tests style, half precision) and the engines' custom all-reduce (CUDA-graph and eager), "
        "single node; every second message size kept (the others score the interpolation)",
        "units": "[message bytes, seconds]",
        "same_silicon": SAME_SILICON,
        "gpus": {},
    }
    for gpu, system in TABLE_OF_GPU.items():
        engines: dict[str, Any] = {}
        comm: dict[str, Any] = {"table": system, "nccl": {}, "custom_allreduce": {}}
        for engine in ENGINES:
            try:
                engines[engine] = fit_engine(gpu, engine)
            except PpplanError:
                continue
            curves = collective_curves(load_tables(gpu, engine))
            comm["nccl"] = comm["nccl"] or curves["nccl"]
            if curves["custom_allreduce"]:
                comm["custom_allreduce"][engine] = curves["custom_allreduce"]
        if engines:
            kernels["gpus"][gpu] = {"table": system, "engines": engines}
            coll["gpus"][gpu] = comm
    k_path, c_path = out_dir / "kernels.json", out_dir / "collectives.json"
    k_path.write_text(json.dumps(kernels, indent=1) + "\n")
    c_path.write_text(json.dumps(coll, indent=1) + "\n")
    return k_path, c_path


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python3 -m ppplan.profiler.kerneldb_fit --write   (refits ppplan/core/data)")
    for p in write_data(Path(str(resources.files("ppplan.core"))) / "data"):
        print(f"wrote {p}")


# ---- composing a layer from the tables --------------------------------------------------------------------
def table_lookup(df: Any, query: dict[str, float]) -> float:
    """Seconds at ``query`` (column → value), interpolated in log(value) × log(seconds) between the
    bracketing measured values of each column in turn (nearest value outside the measured range)."""
    if not query:
        return float(np.exp(np.log(df["seconds"].to_numpy(float)).mean()))
    col, want = next(iter(query.items()))
    rest = {k: v for k, v in query.items() if k != col}
    vals = np.array(sorted(df[col].unique()), dtype=float)
    if want <= vals[0] or want >= vals[-1] or want in vals:
        near = vals[np.argmin(np.abs(np.log(vals) - np.log(max(want, 1e-9))))]
        return table_lookup(df[df[col] == near], rest)
    hi = vals[np.searchsorted(vals, want)]
    lo = vals[np.searchsorted(vals, want) - 1]
    t_lo, t_hi = table_lookup(df[df[col] == lo], rest), table_lookup(df[df[col] == hi], rest)
    w = (np.log(want) - np.log(lo)) / (np.log(hi) - np.log(lo))
    return float(np.exp((1 - w) * np.log(t_lo) + w * np.log(t_hi)))


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerShape:
    """A dense GQA decoder layer (Llama-style) for :func:`compose_decode_layer`."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    inter: int


def compose_decode_layer(t: KernelTables, layer: LayerShape, tp: int, batch: int, context: int) -> dict[str, float]:
    """Seconds of each measured kernel of one bf16 decoder-layer decode step at TP ``tp``, looked up in
    the tables (GEMMs, paged attention, two all-reduces: the engine's CUDA-graph custom all-reduce or
    NCCL, whichever is faster), and their sum under 'total'."""
    g = gemm_rows(t, "bf16")
    hq, kvh = layer.heads // tp, max(1, layer.kv_heads // tp)
    gemms = {
        "qkv": (layer.hidden, (hq + 2 * kvh) * layer.head_dim),
        "o_proj": (hq * layer.head_dim, layer.hidden),
        "gate_up": (layer.hidden, 2 * layer.inter // tp),
        "down": (layer.inter // tp, layer.hidden),
    }
    out = {name: table_lookup(g, {"m": batch, "k": k, "n": n}) for name, (k, n) in gemms.items()}
    d = decode_rows(t)
    d = d[d["head_dim"] == layer.head_dim]
    out["attention"] = table_lookup(
        d, {"num_key_value_heads": kvh, "num_heads": hq, "batch_size": batch, "step": context}
    )
    if tp > 1:
        nbytes = batch * layer.hidden * 2.0
        curves = collective_curves(t, keep="all")
        times = []
        if curves["custom_allreduce"].get("graph", {}).get(str(tp)):
            times.append(_lookup_curve(curves["custom_allreduce"]["graph"][str(tp)], nbytes))
        if curves["nccl"].get("all_reduce", {}).get(str(tp)):
            times.append(_lookup_curve(curves["nccl"]["all_reduce"][str(tp)], nbytes))
        out["allreduce_x2"] = 2 * min(times)
    out["total"] = sum(out.values())
    return out


def _lookup_curve(points: list[list[float]], nbytes: float) -> float:
    arr = np.asarray(points, dtype=float)
    return float(np.exp(np.interp(np.log(nbytes), np.log(arr[:, 0]), np.log(arr[:, 1]))))


# ---- the profile source -----------------------------------------------------------------------------------
def kerneldb_profile(profile: Any, gpus: list[str], engine: str) -> Any:
    """``profile`` with its times composed from the measured tables: for each GPU kind in ``gpus``,
    the shape-aware coefficients fitted now to the installed tables of ``engine`` (stored as the
    profile's calibration for that kind, so every plan names the source and the table versions).

    Raises:
        PpplanError: the extra is missing, or a GPU kind or the engine has no tables.
    """
    from ppplan.core.profile import Efficiency  # lazy: keeps this module's import light

    cal = dict(profile.calibration)
    for gpu in gpus:
        spec = get_gpu(gpu)
        fitted = fit_engine(spec.name, engine)
        fitted["engine"] = engine
        g = fitted["gemm"]["bf16"]
        versions = ", ".join(f"{k} {v}" for k, v in fitted["table_versions"].items())
        cal[spec.name] = Efficiency(
            compute=min(1.0, g["eta_c"]),
            memory=min(1.2, g["eta_m"]),
            overhead_s=g["floor_s"],
            overlap=g["overlap"],
            fit_error=fitted["fit_error"],
            source=f"{DIST} {_dist_version()} kernel tables, {TABLE_OF_GPU[spec.name]}/{engine} ({versions})",
            kernels=fitted,
        )
    prov = dict(profile.provenance)
    prov["source"] = f"kernel-db:aiconfigurator/{engine}"
    return profile.model_copy(update={"calibration": cal, "provenance": prov})

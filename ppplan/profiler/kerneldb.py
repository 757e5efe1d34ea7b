"""The measured kernel database of ``aiconfigurator-core`` (optional extra ``ppplan[kerneldb]``).

``aiconfigurator-core`` (NVIDIA, Apache-2.0) ships per-kernel latencies measured on H100, H200,
B200, A100, L40S and others under vLLM, SGLang and TensorRT-LLM: GEMMs over (M, N, K), prefill and
decode attention over (batch, length, heads, KV heads, head dim), fused MoE, NCCL collectives and
the engines' custom all-reduce. This module reads those tables (only their figures: none of the
package's code is used) and fits the coefficients of ppplan's shape-aware kernel model
(:mod:`ppplan.core.kernels`) to them:

* offline, to write ``ppplan/core/data/kernels.json`` and ``collectives.json`` that ship with the
  default install (``python3 -m ppplan.profiler.kerneldb_fit --write``);
* at plan time, for ``ppplan plan ... --kernel-db aiconfigurator --engine vllm``
  (:func:`ppplan.profiler.kerneldb_fit.kerneldb_profile`): the same fit on the installed tables
  for the requested engine, with the engine's measured collective curves.

Held-out shapes (:func:`held_out`) are excluded from every fit, so ``benchmarks/bench_costmodel.py``
reports errors on shapes the coefficients never saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ppplan.core.errors import PpplanError
from ppplan.core.gpus import GPUSpec, get_gpu
from ppplan.core.kernels import (
    AttentionFit,
    GemmFit,
    decode_attention_time,
    gemm_time,
    prefill_attention_time,
)

__all__ = [
    "DIST",
    "EAGER_FLOOR_S",
    "ENGINES",
    "MIN_GEMM_SIDE",
    "TABLE_OF_GPU",
    "KernelTables",
    "attention_held_out",
    "decode_rows",
    "fit_attention",
    "fit_gemm",
    "fit_least_squares",
    "gemm_rows",
    "held_out",
    "load_tables",
    "log_error",
    "main_kernel",
    "prefill_rows",
    "require_extra",
    "rows_where",
    "table_path",
]

DIST = "aiconfigurator-core"
ENGINES = ("vllm", "sglang", "trtllm")
#: catalog GPU → the database's system directory
TABLE_OF_GPU = {
    "H100-SXM-80GB": "h100_sxm",
    "H200-141GB": "h200_sxm",
    "A100-80GB": "a100_sxm",
    "B200": "b200_sxm",
    "L40S": "l40s",
}
_DTYPE = {"bfloat16": "bf16", "fp8": "fp8"}
#: the eager launch floor per kernel, seconds: the vLLM custom all-reduce's eager − graph latency at
#: small messages on H100 (~18 µs over a ~5 µs kernel, aiconfigurator-core h100_sxm/comm/vllm/0.24.0)
#: is the host-side launch and sync cost a kernel pays without CUDA graphs
EAGER_FLOOR_S = 18e-6
#: smallest N and K of the GEMM rows fitted and scored
MIN_GEMM_SIDE = 256


def require_extra() -> Any:
    """The installed ``aiconfigurator_core`` module.

    Raises:
        PpplanError: the extra is not installed (one line: how to install it).
    """
    try:
        import aiconfigurator_core  # lazy: optional extra, imported only for --kernel-db
    except ImportError:
        raise PpplanError(
            "kernel_db",
            "aiconfigurator",
            rule=f"the measured kernel tables need the optional package {DIST}: pip install 'ppplan[kerneldb]'",
        ) from None
    return aiconfigurator_core


def _root() -> Path:
    mod = require_extra()
    return Path(str(resources.files(mod.__name__))) / "systems" / "data"


def _version_key(v: str) -> tuple[int, ...]:
    parts = []
    for p in v.replace("rc", ".").replace("post", ".").split("."):
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def table_path(system: str, kind: str, engine: str, name: str) -> Path | None:
    """The newest version's ``name`` table of ``kind`` for ``engine`` on ``system``, or None."""
    base = _root() / system / kind / engine
    if not base.is_dir():
        return None
    hits = sorted((p for p in base.glob(f"*/{name}") if p.is_file()), key=lambda p: _version_key(p.parent.name))
    return hits[-1] if hits else None


def _read(path: Path | None) -> Any:
    if path is None:
        return None
    import pandas as pd  # lazy: a dependency of the optional extra

    return pd.read_parquet(path)


@dataclass(frozen=True, slots=True, kw_only=True)
class KernelTables:
    """The measured tables of one GPU kind and engine (latencies converted to seconds)."""

    gpu: GPUSpec
    system: str
    engine: str
    gemm: Any
    context_attention: Any
    generation_attention: Any
    moe: Any
    custom_allreduce: Any
    nccl: Any
    versions: dict[str, str]


@cache
def load_tables(gpu: str, engine: str) -> KernelTables:
    """Read the tables of ``gpu`` (catalog name or alias) for ``engine``.

    Raises:
        PpplanError: the extra is missing, or the database has no tables for this GPU kind or engine.
    """
    spec = get_gpu(gpu)
    system = TABLE_OF_GPU.get(spec.name)
    if system is None:
        raise PpplanError(
            "gpus", spec.name, rule=f"{DIST} has no kernel tables for this GPU kind; it covers {sorted(TABLE_OF_GPU)}"
        )
    if engine not in ENGINES:
        raise PpplanError("engine", engine, rule=f"one of {', '.join(ENGINES)}")
    paths = {
        "gemm": table_path(system, "gemm", engine, "gemm_perf.parquet"),
        "context_attention": table_path(system, "attention", engine, "context_attention_perf.parquet"),
        "generation_attention": table_path(system, "attention", engine, "generation_attention_perf.parquet"),
        "moe": table_path(system, "moe", engine, "moe_perf.parquet"),
        "custom_allreduce": table_path(system, "comm", engine, "custom_allreduce_perf.parquet"),
        "nccl": table_path(system, "comm", "nccl", "nccl_perf.parquet"),
    }
    if paths["gemm"] is None or paths["generation_attention"] is None:
        raise PpplanError("engine", engine, rule=f"{DIST} has no {engine} GEMM/attention tables for {spec.name}")
    frames = {k: _read(p) for k, p in paths.items()}
    for df in frames.values():
        if df is not None:
            df["seconds"] = df["latency"] * 1e-3  # the tables store milliseconds
    versions = {k: p.parent.name for k, p in paths.items() if p is not None}
    return KernelTables(gpu=spec, system=system, engine=engine, versions=versions, **frames)


def held_out(*keys: Any) -> np.ndarray:
    """True for the shapes kept out of every fit: a fixed hash of the shape's defining sizes puts
    one in five aside (GEMM: its (N, K) weight shape, so held-out shapes are unseen weights)."""
    h = np.zeros(len(keys[0]), dtype=np.int64)
    for i, k in enumerate(keys):
        h = h * 1_000_003 + np.asarray(k, dtype=np.int64) * (2 * i + 7)
    return (h % 5) == 2


def fit_least_squares(fun: Any, x0: list[float], lo: list[float], hi: list[float]) -> np.ndarray:
    from scipy.optimize import least_squares  # lazy: a dependency of the optional extra

    return np.asarray(least_squares(fun, x0, bounds=(lo, hi), loss="soft_l1", f_scale=0.1).x)


def log_error(pred: np.ndarray, meas: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(pred, 1e-12)) - np.log(meas)


# ---- GEMM -------------------------------------------------------------------------------------------------
def gemm_rows(t: KernelTables, dtype: str) -> Any:
    """The table's GEMM rows of one ppplan dtype through the engine's default kernel."""
    df = t.gemm
    src = {"bf16": "bfloat16", "fp8": "fp8"}[dtype]
    # weight shards of real layers: both GEMM sides at least MIN_GEMM_SIDE (the tables also sweep
    # 32-wide toy shapes no layer has, whose fixed cost would dominate the fit)
    df = df[(df["gemm_dtype"] == src) & (df["n"] >= MIN_GEMM_SIDE) & (df["k"] >= MIN_GEMM_SIDE)]
    if len(df) and df["kernel_source"].nunique() > 1:
        df = df[df["kernel_source"] == df["kernel_source"].value_counts().index[0]]
    return df


def _gemm_predict(x: np.ndarray, m: Any, n: Any, k: Any, spec: GPUSpec, dtype: str, tile: tuple[int, int]) -> Any:
    fit = GemmFit(eta_c=x[0], eta_m=x[1], floor_s=x[2], overlap=x[3], tiles_half=x[4], tile_m=tile[0], tile_n=tile[1])
    return gemm_time(
        m, n, k, fit, peak=spec.peak_flops(dtype), bw=spec.hbm_bw, sms=spec.sms or 100, in_bytes=_elt(dtype)
    )


def _elt(dtype: str) -> float:
    return 1.0 if dtype == "fp8" else 2.0


def fit_gemm(t: KernelTables, dtype: str) -> tuple[GemmFit, float] | None:
    """GEMM coefficients of ``dtype`` fitted on the non-held-out weight shapes, and the median
    training error; None when the table has no rows of that dtype."""
    df = gemm_rows(t, dtype)
    if not len(df):
        return None
    df = df[~held_out(df["n"], df["k"])]
    m, n, k, s = (df[c].to_numpy(float) for c in ("m", "n", "k", "seconds"))
    best: tuple[float, GemmFit] | None = None
    for tile in ((64, 128), (128, 128), (128, 256)):
        x = fit_least_squares(
            lambda x, tile=tile: log_error(_gemm_predict(x, m, n, k, t.gpu, dtype, tile), s),
            [0.7, 0.8, 5e-6, 0.2, 20.0],
            [0.05, 0.05, 0.0, 0.0, 0.0],
            [1.0, 1.2, 1e-4, 1.0, 2000.0],
        )
        err = float(np.median(np.abs(_gemm_predict(x, m, n, k, t.gpu, dtype, tile) / s - 1)))
        if best is None or err < best[0]:
            best = (
                err,
                GemmFit(
                    eta_c=x[0], eta_m=x[1], floor_s=x[2], overlap=x[3], tiles_half=x[4], tile_m=tile[0], tile_n=tile[1]
                ),
            )
    assert best is not None
    return best[1], best[0]


# ---- attention --------------------------------------------------------------------------------------------
def rows_where(df: Any, **eq: Any) -> Any:
    """Rows equal to every given column value (a column an older table lacks is not filtered)."""
    for col, val in eq.items():
        if col in df.columns:
            df = df[df[col] == val]
    return df


def main_kernel(df: Any) -> Any:
    if len(df) and df["kernel_source"].nunique() > 1:
        df = df[df["kernel_source"] == df["kernel_source"].value_counts().index[0]]
    return df


def decode_rows(t: KernelTables) -> Any:
    """Decode attention rows (no window, bf16 KV, the engine's main kernel) with bytes and FLOPs."""
    df = t.generation_attention
    df = main_kernel(rows_where(df, window_size=0, kv_cache_dtype="bfloat16")).copy()
    ctx = df["step"].to_numpy(float) + 1.0
    b, h, kvh, hd = (df[c].to_numpy(float) for c in ("batch_size", "num_heads", "num_key_value_heads", "head_dim"))
    df["kv_bytes"] = b * ctx * kvh * hd * 2 * 2
    df["flops"] = 4.0 * b * ctx * h * hd
    return df


def prefill_rows(t: KernelTables) -> Any:
    """Causal prefill attention rows (no window, bf16 KV, the main kernel) with their FLOPs."""
    df = t.context_attention
    df = main_kernel(rows_where(df, window_size=0, kv_cache_dtype="bfloat16")).copy()
    b, s, h, hd = (df[c].to_numpy(float) for c in ("batch_size", "isl", "num_heads", "head_dim"))
    kvh = df["num_key_value_heads"].to_numpy(float)
    df["flops"] = 4.0 * hd * h * b * s * (s + 1) / 2
    df["nbytes"] = b * s * (2.0 * h + 2.0 * kvh) * hd * 2.0  # Q, K, V read and O written, bf16
    return df


def attention_held_out(df: Any) -> Any:
    return held_out(df["num_heads"], df["num_key_value_heads"], df["head_dim"], df["batch_size"])


def fit_attention(t: KernelTables) -> tuple[AttentionFit, dict[str, float]]:
    """Decode and prefill attention coefficients fitted on the non-held-out shapes (and median errors)."""
    spec = t.gpu
    peak = spec.peak_flops("bf16")
    d = decode_rows(t)
    d = d[~attention_held_out(d)]
    b, kvh, kvb, fl, s = (
        d[c].to_numpy(float) for c in ("batch_size", "num_key_value_heads", "kv_bytes", "flops", "seconds")
    )

    def dec(x: np.ndarray) -> Any:
        fit = _attn(_seconds(x), [0.5], 1000.0, 0.0)
        return decode_attention_time(b, kvb, fl, kvh, fit, peak=peak, bw=spec.hbm_bw)

    # floor in µs and per-item cost in ns, so every parameter is of order one for the solver
    raw = fit_least_squares(
        lambda x: log_error(dec(x), s),
        [0.8, 4.0, 0.3, 5.0, 10.0],
        [0.05, 0.0, 0.01, 0.0, 0.0],
        [1.2, 1e4, 1.0, 100.0, 1e4],
    )
    err = {"decode_attention": float(np.median(np.abs(dec(raw) / s - 1)))}
    xd = _seconds(raw)
    p = prefill_rows(t)
    p = p[~attention_held_out(p)]
    dims = sorted(int(x) for x in p["head_dim"].unique())
    hd, isl, pf, ps, pb = (p[c].to_numpy(float) for c in ("head_dim", "isl", "flops", "seconds", "nbytes"))

    def pre(x: np.ndarray) -> Any:  # x: tokens half, floor (µs), HBM share, η per head dim
        fit = _attn(xd, list(x[3:]), x[0], x[1] * 1e-6, dims, x[2])
        return prefill_attention_time(isl, pf, hd, fit, peak=peak, nbytes=pb, bw=spec.hbm_bw)

    best = None
    for start in (0.5, 0.2):  # two starts: a flat region near one of them stalls the solver
        x = fit_least_squares(
            lambda x: log_error(pre(x), ps),
            [500.0, 5.0, 0.5] + [start] * len(dims),
            [0.0, 0.0, 0.01] + [0.01] * len(dims),
            [1e5, 1e3, 2.0] + [1.0] * len(dims),
        )
        e = float(np.median(np.abs(pre(x) / ps - 1)))
        if best is None or e < best[0]:
            best = (e, x)
    assert best is not None
    xp = best[1]
    err["prefill_attention"] = float(np.median(np.abs(pre(xp) / ps - 1)))
    return _attn(xd, list(xp[3:]), xp[0], xp[1] * 1e-6, dims, xp[2]), err


def _seconds(x: np.ndarray) -> np.ndarray:
    """Decode parameters with the floor (µs) and per-item cost (ns) in seconds."""
    return np.array([x[0], x[1], x[2], x[3] * 1e-6, x[4] * 1e-9])


def _attn(
    xd: Any, etas: list[float], half: float, floor: float, dims: list[int] | None = None, eta_m: float = 1.0
) -> AttentionFit:
    dims = dims or [128]
    return AttentionFit(
        decode_eta_m=float(xd[0]),
        decode_work_half=float(xd[1]),
        decode_eta_c=float(xd[2]),
        decode_floor_s=float(xd[3]),
        prefill_eta_c={dm: float(e) for dm, e in zip(dims, etas, strict=True)},
        prefill_tokens_half=float(half),
        prefill_floor_s=float(floor),
        decode_work_s=float(xd[4]),
        prefill_eta_m=float(eta_m),
    )

"""Calibration accuracy on CPU: fit efficiency on one model's measured profile, predict another's.

Measures two small Llama-family configs (different widths and MLP ratios, 128-dim heads) and a
tiny one on this CPU, fits ``Efficiency`` for the 'CPU' catalog kind on model A, and prints, per
unit and phase, model B's measured time against the calibrated analytic prediction, with the median
absolute relative error per phase. Figures only, no timed asserts.

    python benchmarks/bench_calibration.py [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from ppplan.core.profile import Profile
from ppplan.profiler.analytic import analytic_profile, model_spec
from ppplan.profiler.calibrate import fit_efficiency, held_out_errors, points_from_profile, predict_points
from ppplan.profiler.configs import load_model_config
from ppplan.profiler.measure import ProfileGrid, run_profile

GRID = ProfileGrid(prefill_tokens=(32, 128, 512), decode_batches=(1, 8, 32), decode_contexts=(128, 512))


def _llama(hidden: int, inter: int, heads: int, kv: int, layers: int, vocab: int) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": hidden // heads,
        "num_hidden_layers": layers,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
    }


MODELS = {
    "small-a": _llama(1024, 3584, 8, 2, 2, 32000),  # fit on this one
    "small-b": _llama(1536, 4096, 12, 4, 2, 49152),  # predict this one
}


def _times(p: Profile) -> list[float]:
    return [q.time_s for u in p.units for q in u.measured]


def fastest(runs: list[Profile]) -> Profile:
    """The first profile with each measured point's time replaced by its fastest over ``runs``."""
    units = []
    for k, u in enumerate(runs[0].units):
        pts = [
            q.model_copy(update={"time_s": min(r.units[k].measured[i].time_s for r in runs)})
            for i, q in enumerate(u.measured)
        ]
        units.append(u.model_copy(update={"measured": pts}))
    return runs[0].model_copy(update={"units": units})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads while measuring")
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="measure each model this many times, interleaved, and keep each point's fastest "
        "median (a shared machine only ever adds time)",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfgs = {}
        for name, raw in MODELS.items():
            path = Path(tmp) / f"{name}.json"
            path.write_text(json.dumps(raw))
            cfgs[name] = load_model_config(str(path))
        t0 = time.perf_counter()
        runs: dict[str, list[Profile]] = {n: [] for n in cfgs}
        for _ in range(max(1, args.repeats)):
            for n, c in cfgs.items():
                runs[n].append(run_profile(c, device="cpu", grid=GRID, cpu_threads=args.threads))
        profs = {n: fastest(rs) for n, rs in runs.items()}
        spread = [abs(b / a - 1) for rs in runs.values() for a, b in zip(_times(rs[0]), _times(rs[-1]), strict=True)]
        print(
            f"measured {len(profs)} models ×{args.repeats} in {time.perf_counter() - t0:.1f} s on CPU "
            f"({args.threads} thread(s)); grid {GRID.describe()}; first vs last run of a point: median "
            f"|Δ| {statistics.median(spread):.1%} (the machine's noise floor)"
        )
        a, b = profs["small-a"], profs["small-b"]
        eff = fit_efficiency(a, "CPU", points_from_profile(a), source=a.label)
        print(
            f"fit on small-a: η_compute {eff.compute:.4f}, η_memory {eff.memory:.4f}, overhead "
            f"{eff.overhead_s * 1e6:.1f} µs, overlap ω {eff.overlap:.2f}; fit error (median) "
            + ", ".join(f"{k} {v:.1%}" for k, v in eff.fit_error.items())
        )
        res = held_out_errors(eff, b, "CPU")  # small-b's own bytes and FLOPs, calibrated by small-a
        default = analytic_profile(model_spec(cfgs["small-b"]), "bf16", "bf16")
        pts = points_from_profile(b)
        meas = np.array([p.seconds for p in pts])
        pred_default = predict_points(default, "CPU", pts)
        print(
            f"\n{'unit':>4} {'kind':>7} {'phase':>7} {'tokens':>6} {'ctx':>5} {'measured ms':>11} "
            f"{'predicted ms':>12} {'error':>7}"
        )
        seen = set()
        for unit, kind, phase, tokens, ctx, m, q in res["points"]:
            key = (b.units[unit].signature, phase, tokens, ctx)
            if key in seen:
                continue
            seen.add(key)
            print(
                f"{unit:>4} {kind:>7} {phase:>7} {tokens:>6} {ctx:>5} {m * 1e3:>11.3f} {q * 1e3:>12.3f} "
                f"{q / m - 1:>+7.1%}"
            )
        print("\nmedian |error| predicting small-b with small-a's calibration (uncalibrated catalog figures):")
        for phase in ("prefill", "decode"):
            sel = [k for k, p in enumerate(pts) if p.phase == phase]
            e0 = np.abs(pred_default[sel] / meas[sel] - 1)
            print(
                f"  {phase:>7}: all units {res['phase'][phase]:.1%} ({np.median(e0):.1%}); decoder layers "
                f"{res['kind_phase'][f'decoder {phase}']:.1%}"
            )
        counts: dict[str, int] = {}
        for _, kind, phase, *_rest in res["points"]:
            counts[f"{kind} {phase}"] = counts.get(f"{kind} {phase}", 0) + 1
        for key, err in sorted(res["kind_phase"].items()):
            kind, phase = key.split()
            print(f"  {kind:>7} {phase:>7}: {err:.1%} over {counts[key]} point(s)")


if __name__ == "__main__":
    main()

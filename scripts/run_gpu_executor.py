"""Run an uneven PP plan of Llama-3.1-8B shapes (fewer layers, random weights) on the GPU(s) at hand.

One prepared script for a device machine: it writes a config with the 8B's shapes and
``--layers`` decoder layers, plans it for ``2xH100`` at PP 2 with a small workload, forces an
uneven cut when the planner's is even, runs it with ``ppplan run``'s engine on CUDA (NCCL when each
rank has its own GPU, otherwise the ranks share the GPU over gloo), checks it against the unsplit
model in bf16, and writes the report (predicted vs measured per stage) to ``--out``.

    python scripts/run_gpu_executor.py --out "$OUT"            # on the GPU machine
    python scripts/run_gpu_executor.py --dry-run --out /tmp/x  # no GPU: config, plan and cut only

Nothing is invented: without a GPU (and without --dry-run) the script exits with status 3.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def prepare(
    out: Path, layers: int, gpus: str, prompt: int, output: int, concurrency: int, base: str = "llama-3.1-8b"
) -> dict[str, Any]:
    """Write the config (``base``'s shapes, ``layers`` decoder layers), plan it, force an uneven cut;
    returns the plan (dict)."""
    from ppplan.executor.recut import recut
    from ppplan.partitioner.request import PlanRequest
    from ppplan.profiler.configs import load_model_config
    from ppplan.profiler.resolve import plan_request

    cfg = dict(load_model_config(base).raw)
    cfg.update(num_hidden_layers=layers)
    model_dir = out / f"{base}-shapes-{layers}l"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(cfg, indent=1))
    req = PlanRequest(
        model=str(model_dir), gpus=gpus, tp=1, pp=2, prompt_tokens=prompt, output_tokens=output, concurrency=concurrency
    )
    plan = plan_request(req).model_dump(mode="json")
    sizes = plan["partition"]
    if len(set(sizes)) == 1:  # the check is about uneven cuts: move one layer to the first stage
        plan = recut(plan, [sizes[0] + 1, sizes[1] - 1])
    (out / "plan.json").write_text(json.dumps(plan, indent=1))
    return plan


def check_detail(
    run_dir: Path, plan: dict[str, Any], report: dict[str, Any], dtype: str, device: str
) -> dict[str, Any]:
    """Per sequence and decode step: max |Δlogit| and each run's top-two margin (for choosing a rule),
    and how far a second run of the reference lands from the first (the determinism floor)."""
    import torch

    from ppplan.executor.reference import reference_outputs
    from ppplan.executor.run import model_name_of

    run, ref = torch.load(run_dir / "outputs.pt"), torch.load(run_dir / "reference.pt")
    rl, fl = run["logits"].float(), ref["logits"].float()
    steps = fl.shape[-2]
    rl, fl = rl.reshape(-1, steps, rl.shape[-1]), fl.reshape(-1, steps, fl.shape[-1])
    rt, ft = run["tokens"].reshape(-1, steps), ref["tokens"].reshape(-1, steps)
    top_r, top_f = rl.topk(2, dim=-1).values, fl.topk(2, dim=-1).values
    again = reference_outputs(
        model_name_of(plan), workload=report["workload"], seed=0, dtype=dtype, device=device, checkpoint=None
    )
    return {
        "reference_repeat_max_abs_diff": float((again["logits"].float() - ref["logits"].float()).abs().max()),
        "max_abs_diff": (rl - fl).abs().amax(-1).tolist(),
        "ref_margin": (top_f[..., 0] - top_f[..., 1]).tolist(),
        "run_margin": (top_r[..., 0] - top_r[..., 1]).tolist(),
        "tokens_differ": (rt != ft).tolist(),
        "ref_logit_std": fl.std(-1).tolist(),
        "ref_logit_absmax": fl.abs().amax(-1).tolist(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for config, plan, report")
    ap.add_argument("--layers", type=int, default=6, help="decoder layers of the 8B-shaped model")
    ap.add_argument("--gpus", default="2xH100", help="what the plan is for (catalog kind)")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--output-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--base", default="llama-3.1-8b", help="preset whose shapes the model takes")
    ap.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cpu: rehearse the whole script on CPU ranks (use a small --base)",
    )
    ap.add_argument("--dry-run", action="store_true", help="prepare only (no GPU needed)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    plan = prepare(
        args.out, args.layers, args.gpus, args.prompt_tokens, args.output_tokens, args.concurrency, args.base
    )
    print(
        f"plan: {plan['model']['name']} ({args.layers} layers of {args.base} shapes) on {args.gpus}, "
        f"partition {plan['partition']}, {plan['degrees']['micro_batches']} micro-batches of "
        f"{plan['degrees']['micro_batch_size']}"
    )
    if args.dry_run:
        print(f"dry run: wrote {args.out / 'plan.json'}; run without --dry-run on a GPU machine")
        return
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU visible; nothing was run (use --dry-run to only prepare)", file=sys.stderr)
        raise SystemExit(3)
    from rich.console import Console

    from ppplan.executor.report import print_report
    from ppplan.executor.run import run_plan

    t0 = time.perf_counter()
    report = run_plan(plan, device=args.device, dtype=args.dtype, run_dir=args.out / "run", timeout_s=200)
    if report is None:
        raise SystemExit("no report came back (node 0 holds it)")
    cuda = args.device == "cuda"
    report["gpu_name"] = torch.cuda.get_device_name(0) if cuda else "CPU (rehearsal)"
    report["gpu_count"] = torch.cuda.device_count() if cuda else 0
    report["script_wall_s"] = time.perf_counter() - t0
    report["check_detail"] = check_detail(args.out / "run", plan, report, args.dtype, args.device)
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    with open(args.out / "report.txt", "w") as fh:
        print_report(report, Console(file=fh, width=170))
    print_report(report, Console(width=170))
    print(
        f"GPU {report['gpu_name']} ×{report['gpu_count']}, backend {report['backend']}; "
        f"wrote {args.out / 'report.json'}"
    )


if __name__ == "__main__":
    main()

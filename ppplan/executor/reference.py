"""The correctness check: the unsplit model in one process, the same weights, the same prompts.

The reference runs transformers' own ``ForCausalLM.forward`` (not the executor's stage code) with
its cache, one micro-batch at a time (the same shapes as the pipeline, so float32 results agree to
rounding), greedy over the same number of tokens, and compares tokens and every step's logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ppplan.executor.schedule import prompts
from ppplan.executor.serve import request_prompt
from ppplan.executor.stage import dtype_of, rotary_embedding
from ppplan.executor.weights import materialise
from ppplan.profiler.configs import load_model_config
from ppplan.profiler.hf_compat import cache_kwargs
from ppplan.profiler.models import build_hf_config, build_meta_model

__all__ = [
    "LOGITS_TOLERANCE",
    "LOGITS_TOLERANCE_ULPS",
    "CheckResult",
    "compare",
    "compare_requests",
    "reference_outputs",
    "reference_requests",
]

#: smallest allowed |pipeline logit - reference logit| tolerance per dtype (an absolute floor)
LOGITS_TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}
#: low precision: the tolerance at a step is also at least this many units in the last place of the
#: reference's largest |logit| at that step. On an H100 the unsplit bf16 model does not repeat itself
#: bit for bit during decode (a second run of the reference differed by one ulp, then diverged), and
#: the pipeline's pre-divergence differences stayed within 2.75 ulps (0.086 at |logit| ≈ 6)
LOGITS_TOLERANCE_ULPS = {"bfloat16": 4, "float16": 4}
_EPS = {"bfloat16": 2.0**-7, "float16": 2.0**-10}


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Outcome of comparing a run with the unsplit reference.

    Each sequence is compared step by step up to its first differing token: every logit of those
    steps must be within ``tolerance`` of the reference's. A sequence may diverge only at a near-tie,
    where each run's token is within ``tolerance`` of the other's best logit at that step (low
    precision rounds such ties either way; random weights make them common in bf16); steps after a
    divergence decode different prefixes and are not compared."""

    passed: bool
    tokens_equal: bool
    token_mismatches: int
    """generated tokens (over all sequences and steps) that differ"""
    tokens_total: int
    logits_max_abs_diff: float
    """largest |run − reference| logit over the compared steps"""
    tolerance: float
    """the largest per-step tolerance applied (see :func:`compare`)"""
    dtype: str
    diverged_at_near_tie: int = 0
    """sequences whose tokens diverge where both runs' top two logits are within tolerance"""
    diverged_otherwise: int = 0
    """sequences whose tokens diverge where no near-tie explains it (a failure)"""
    first_divergence_step: int | None = None
    """earliest decode step (0 = the token after the prompt) at which any sequence diverges"""
    compared_steps: int = 0
    """(sequence, step) pairs whose logits were compared"""

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form."""
        return {
            "passed": self.passed,
            "tokens_equal": self.tokens_equal,
            "token_mismatches": self.token_mismatches,
            "tokens_total": self.tokens_total,
            "logits_max_abs_diff": self.logits_max_abs_diff,
            "tolerance": self.tolerance,
            "dtype": self.dtype,
            "diverged_at_near_tie": self.diverged_at_near_tie,
            "diverged_otherwise": self.diverged_otherwise,
            "first_divergence_step": self.first_divergence_step,
            "compared_steps": self.compared_steps,
            "reference": "unsplit transformers model, one process, same seed/checkpoint, per micro-batch",
            "rule": "logits within tolerance up to each sequence's first differing token; a divergence "
            "only at a near-tie (each token within tolerance of the other's best logit); bf16/fp16 "
            "tolerance at least 4 ulps of the step's largest |logit|",
        }


@torch.inference_mode()
def reference_outputs(
    model_name: str,
    *,
    workload: dict[str, int],
    seed: int,
    dtype: str,
    device: str,
    checkpoint: str | None,
    use_cache: bool = True,
) -> dict[str, torch.Tensor]:
    """Greedy tokens ``[M, b, N]`` and last-position logits ``[M, b, N, vocab]`` of the unsplit model.

    ``use_cache=False`` recomputes the whole sequence at every step instead of decoding over the KV
    cache: an oracle that does not trust the cache path (a test compares the two)."""
    model, hf, dev = _reference_model(model_name, seed=seed, dtype=dtype, device=device, checkpoint=checkpoint)
    M, b, P, N = (
        workload["micro_batches"],
        workload["micro_batch_size"],
        workload["prompt_tokens"],
        workload["new_tokens"],
    )
    ids = prompts(seed, int(hf.vocab_size), M, b, P)
    toks, logs = [], []
    for m in range(M):
        tk, lg = _greedy(model, ids[m].to(dev), N, use_cache=use_cache)
        toks.append(tk)
        logs.append(lg)
    return {"tokens": torch.stack(toks), "logits": torch.stack(logs)}


def _reference_model(
    model_name: str, *, seed: int, dtype: str, device: str, checkpoint: str | None
) -> tuple[Any, Any, torch.device]:
    """The unsplit model with the run's weights, its HF config and device."""
    hf = build_hf_config(load_model_config(model_name))
    hf._attn_implementation = "sdpa"
    model = build_meta_model(hf).eval()
    dev = torch.device(device)
    top = [n for n, _ in model.named_children()]
    materialise(
        model,
        top,
        seed=seed,
        std=float(getattr(hf, "initializer_range", 0.02)),
        device=dev,
        dtype=dtype_of(dtype),
        checkpoint=Path(checkpoint) if checkpoint else None,
    )
    rot = rotary_embedding(model, hf, dev)
    for name, _mod in list(model.named_modules()):
        if name.endswith("rotary_emb"):
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], rot)
            break
    return model, hf, dev


def _greedy(model: Any, ids: torch.Tensor, N: int, *, use_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens ``[b, N]`` and last-position logits ``[b, N, vocab]`` (CPU) after prompts ``ids [b, P]``."""
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    cache = getattr(out, "past_key_values", None) or getattr(out, "cache", None)
    lg = [out.logits[:, -1].float()]
    tk = [lg[-1].argmax(-1)]
    for _ in range(1, N):
        if not use_cache:
            seq = torch.cat([ids, torch.stack(tk, 1)], 1)
            out = model(input_ids=seq, use_cache=False, logits_to_keep=1)
            lg.append(out.logits[:, -1].float())
            tk.append(lg[-1].argmax(-1))
            continue
        out = model(input_ids=tk[-1].unsqueeze(-1), use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache))
        cache = getattr(out, "past_key_values", None) or getattr(out, "cache", None)
        lg.append(out.logits[:, -1].float())
        tk.append(lg[-1].argmax(-1))
    return torch.stack(tk, 1).cpu(), torch.stack(lg, 1).cpu()


@torch.inference_mode()
def reference_requests(
    model_name: str,
    requests: list[tuple[int, int, int]],
    *,
    seed: int,
    load_seed: int,
    dtype: str,
    device: str,
    checkpoint: str | None,
) -> dict[int, dict[str, torch.Tensor]]:
    """Per request (index, prompt tokens, output tokens) of a load run: the unsplit model's greedy
    ``tokens [N]`` and ``logits [N, vocab]``, one request at a time, on the run's prompts."""
    model, hf, dev = _reference_model(model_name, seed=seed, dtype=dtype, device=device, checkpoint=checkpoint)
    out = {}
    for idx, P, N in requests:
        ids = request_prompt(load_seed, idx, int(hf.vocab_size), P).unsqueeze(0).to(dev)
        tk, lg = _greedy(model, ids, N)
        out[idx] = {"tokens": tk[0], "logits": lg[0]}
    return out


def compare_requests(
    run: dict[str, dict[int, Any]], ref: dict[int, dict[str, torch.Tensor]], dtype: str
) -> CheckResult:
    """:func:`compare` over a load run's requests (each its own sequence), merged into one result;
    ``run`` holds ``tokens`` (lists of ids) and ``logits`` (``[N, vocab]``) per request index."""
    parts = []
    for idx, want in ref.items():
        got_t = torch.tensor(run["tokens"].get(idx, []), dtype=torch.int64)
        got_l = run["logits"].get(idx, torch.empty(0))
        mine = {"tokens": got_t.reshape(1, 1, -1), "logits": got_l.reshape(1, 1, *got_l.shape[-2:])}
        theirs = {
            "tokens": want["tokens"].reshape(1, 1, -1),
            "logits": want["logits"].reshape(1, 1, -1, want["logits"].shape[-1]),
        }
        parts.append(compare(mine, theirs, dtype))
    firsts = [p.first_divergence_step for p in parts if p.first_divergence_step is not None]
    return CheckResult(
        passed=all(p.passed for p in parts),
        tokens_equal=all(p.tokens_equal for p in parts),
        token_mismatches=sum(p.token_mismatches for p in parts),
        tokens_total=sum(p.tokens_total for p in parts),
        logits_max_abs_diff=max((p.logits_max_abs_diff for p in parts), default=0.0),
        tolerance=max((p.tolerance for p in parts), default=LOGITS_TOLERANCE[dtype]),
        dtype=dtype,
        diverged_at_near_tie=sum(p.diverged_at_near_tie for p in parts),
        diverged_otherwise=sum(p.diverged_otherwise for p in parts),
        first_divergence_step=min(firsts) if firsts else None,
        compared_steps=sum(p.compared_steps for p in parts),
    )


def compare(run: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], dtype: str) -> CheckResult:
    """Compare a run's greedy tokens ``[M, b, N]`` and logits ``[M, b, N, vocab]`` with the reference's.

    The rule is :class:`CheckResult`'s. The tolerance at a step is :data:`LOGITS_TOLERANCE` of
    ``dtype``, and in bf16/fp16 at least :data:`LOGITS_TOLERANCE_ULPS` units in the last place of the
    reference's largest |logit| at that step; ``tolerance`` in the result is the largest one applied."""
    tol = LOGITS_TOLERANCE[dtype]
    rt, ft = run["tokens"], ref["tokens"]
    if rt.shape != ft.shape or run["logits"].shape != ref["logits"].shape:
        n = int(ft.numel())
        return CheckResult(False, False, n, n, float("inf"), tol, dtype)
    rl, fl = run["logits"].float(), ref["logits"].float()
    steps = ft.shape[-1]
    rt2, ft2 = rt.reshape(-1, steps), ft.reshape(-1, steps)
    rl2, fl2 = rl.reshape(-1, steps, rl.shape[-1]), fl.reshape(-1, steps, fl.shape[-1])
    mism = int((rt2 != ft2).sum())
    step_tol = torch.full(ft2.shape, tol)  # [sequences, steps]
    if dtype in LOGITS_TOLERANCE_ULPS:
        top = fl2.abs().amax(-1).clamp_min(1e-30)
        ulp = torch.exp2(torch.floor(torch.log2(top))) * _EPS[dtype]
        step_tol = torch.maximum(step_tol, LOGITS_TOLERANCE_ULPS[dtype] * ulp)
    worst, used_tol, compared, near, other, first, within = 0.0, 0.0, 0, 0, 0, None, True
    for i in range(rt2.shape[0]):
        differ = (rt2[i] != ft2[i]).nonzero()
        k = int(differ[0]) if differ.numel() else steps - 1
        compared += k + 1  # the logits of the diverging step still come from identical prefixes
        d = (rl2[i, : k + 1] - fl2[i, : k + 1]).abs().amax(-1)
        worst = max(worst, float(d.max()))
        used_tol = max(used_tol, float(step_tol[i, : k + 1].max()))
        within &= bool((d <= step_tol[i, : k + 1]).all())
        if differ.numel():
            first = k if first is None else min(first, k)
            a, b, t = int(rt2[i, k]), int(ft2[i, k]), float(step_tol[i, k])
            tie = (float(fl2[i, k, b] - fl2[i, k, a]) <= t) and (float(rl2[i, k, a] - rl2[i, k, b]) <= t)
            near, other = near + tie, other + (not tie)
    return CheckResult(
        passed=other == 0 and within,
        tokens_equal=mism == 0,
        token_mismatches=mism,
        tokens_total=int(ft.numel()),
        logits_max_abs_diff=worst,
        tolerance=used_tol,
        dtype=dtype,
        diverged_at_near_tie=near,
        diverged_otherwise=other,
        first_divergence_step=first,
        compared_steps=compared,
    )

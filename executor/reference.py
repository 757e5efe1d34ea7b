"""The correctness check: the unsplit model in one process, the same weights, the same prompts.

The reference runs transformers' own ``ForCausalLM.forward`` (not the executor's stage code) with
its cache, one micro-batch at a time (the same shapes as the pipeline, so float32 results agree to
rounding), greedy over the same number of tokens, and compares tokens and every step's logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from executor.stage import dtype_of
from executor.worker import prompts
from profiler.hf_compat import cache_kwargs

__all__ = ["LOGITS_TOLERANCE", "CheckResult", "compare", "reference_outputs"]

#: largest allowed |pipeline logit - reference logit| per dtype (tokens must be identical)
LOGITS_TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Outcome of comparing a run with the unsplit reference."""

    passed: bool
    tokens_equal: bool
    token_mismatches: int
    """generated tokens (over all sequences and steps) that differ"""
    tokens_total: int
    logits_max_abs_diff: float
    tolerance: float
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form."""
        return {"passed": self.passed, "tokens_equal": self.tokens_equal, "token_mismatches": self.token_mismatches,
                "tokens_total": self.tokens_total, "logits_max_abs_diff": self.logits_max_abs_diff,
                "tolerance": self.tolerance, "dtype": self.dtype,
                "reference": "unsplit transformers model, one process, same seed/checkpoint, per micro-batch"}


@torch.inference_mode()
def reference_outputs(model_name: str, *, workload: dict[str, int], seed: int, dtype: str, device: str,
                      checkpoint: str | None, use_cache: bool = True) -> dict[str, torch.Tensor]:
    """Greedy tokens ``[M, b, N]`` and last-position logits ``[M, b, N, vocab]`` of the unsplit model.

    ``use_cache=False`` recomputes the whole sequence at every step instead of decoding over the KV
    cache: an oracle that does not trust the cache path (a test compares the two)."""
    from pathlib import Path

    from executor.stage import rotary_embedding
    from executor.weights import materialise
    from profiler.configs import load_model_config
    from profiler.models import build_hf_config, build_meta_model

    hf = build_hf_config(load_model_config(model_name))
    hf._attn_implementation = "sdpa"
    model = build_meta_model(hf).eval()
    dev = torch.device(device)
    top = [n for n, _ in model.named_children()]
    materialise(model, top, seed=seed, std=float(getattr(hf, "initializer_range", 0.02)), device=dev,
                dtype=dtype_of(dtype), checkpoint=Path(checkpoint) if checkpoint else None)
    rot = rotary_embedding(model, hf, dev)
    for name, _mod in list(model.named_modules()):
        if name.endswith("rotary_emb"):
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], rot)
            break
    M, b, P, N = workload["micro_batches"], workload["micro_batch_size"], workload["prompt_tokens"], \
        workload["new_tokens"]
    ids = prompts(seed, int(hf.vocab_size), M, b, P)
    toks, logs = [], []
    for m in range(M):
        out = model(input_ids=ids[m].to(dev), use_cache=True, logits_to_keep=1)
        cache = getattr(out, "past_key_values", None) or getattr(out, "cache", None)
        lg = [out.logits[:, -1].float()]
        tk = [lg[-1].argmax(-1)]
        for _ in range(1, N):
            if not use_cache:
                seq = torch.cat([ids[m].to(dev), torch.stack(tk, 1)], 1)
                out = model(input_ids=seq, use_cache=False, logits_to_keep=1)
                lg.append(out.logits[:, -1].float())
                tk.append(lg[-1].argmax(-1))
                continue
            out = model(input_ids=tk[-1].unsqueeze(-1), use_cache=True, logits_to_keep=1,
                        **cache_kwargs(model, cache))
            cache = getattr(out, "past_key_values", None) or getattr(out, "cache", None)
            lg.append(out.logits[:, -1].float())
            tk.append(lg[-1].argmax(-1))
        toks.append(torch.stack(tk, 1).cpu())
        logs.append(torch.stack(lg, 1).cpu())
    return {"tokens": torch.stack(toks), "logits": torch.stack(logs)}


def compare(run: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], dtype: str) -> CheckResult:
    """Tokens must be identical and logits within :data:`LOGITS_TOLERANCE` of the reference."""
    tol = LOGITS_TOLERANCE[dtype]
    if run["tokens"].shape != ref["tokens"].shape:
        return CheckResult(False, False, int(ref["tokens"].numel()), int(ref["tokens"].numel()), float("inf"), tol,
                           dtype)
    mism = int((run["tokens"] != ref["tokens"]).sum())
    diff = float((run["logits"].float() - ref["logits"].float()).abs().max())
    return CheckResult(passed=mism == 0 and diff <= tol, tokens_equal=mism == 0, token_mismatches=mism,
                       tokens_total=int(ref["tokens"].numel()), logits_max_abs_diff=diff, tolerance=tol, dtype=dtype)

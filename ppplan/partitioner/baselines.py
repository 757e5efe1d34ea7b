"""The engines' default layer partitions (what users get when they set nothing).

Verified against the engines' sources (DESIGN.md, "Engine knobs"); golden-tested on 61 layers / 8
stages. Each returns decoder layers per stage.
"""

from __future__ import annotations

from ppplan.core.errors import PpplanError

__all__ = ["ENGINE_DEFAULTS", "sglang_default", "trtllm_default", "vllm_default"]


def _check(layers: int, stages: int) -> None:
    if stages < 1 or layers < stages:
        raise PpplanError("stages", rule=f"{stages} stages need 1 ≤ stages ≤ layers ({layers})")


def vllm_default(layers: int, stages: int) -> list[int]:
    """vLLM ``get_pp_indices``: ⌊L/p⌋ each, the remainder added to stages p-2, p-3, … (never the last)."""
    _check(layers, stages)
    parts = [layers // stages] * stages
    rem = layers % stages
    for i in range(2, rem + 2):
        parts[-i] += 1
    return parts


def sglang_default(layers: int, stages: int) -> list[int]:
    """SGLang (current releases): ⌊L/p⌋ each, the remainder on the last stages."""
    _check(layers, stages)
    parts = [layers // stages] * stages
    for i in range(1, layers % stages + 1):
        parts[-i] += 1
    return parts


def trtllm_default(layers: int, stages: int) -> list[int]:
    """TensorRT-LLM: ⌊L/p⌋ each, one extra on each of the first ``L mod p`` stages."""
    _check(layers, stages)
    parts = [layers // stages] * stages
    for i in range(layers % stages):
        parts[i] += 1
    return parts


ENGINE_DEFAULTS = {"vllm": vllm_default, "sglang": sglang_default, "trtllm": trtllm_default}

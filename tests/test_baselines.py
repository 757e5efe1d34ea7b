"""Engine default cuts, golden-tested on 61 layers / 8 stages (DESIGN.md, verified against the engines)."""

from __future__ import annotations

import pytest

from ppplan.partitioner.baselines import sglang_default, trtllm_default, vllm_default


def test_golden_61_on_8() -> None:
    assert vllm_default(61, 8) == [7, 7, 8, 8, 8, 8, 8, 7]
    assert sglang_default(61, 8) == [7, 7, 7, 8, 8, 8, 8, 8]
    assert trtllm_default(61, 8) == [8, 8, 8, 8, 8, 7, 7, 7]


@pytest.mark.parametrize("rule", [vllm_default, sglang_default, trtllm_default])
@pytest.mark.parametrize(("layers", "stages"), [(32, 4), (80, 3), (126, 16), (5, 5), (7, 1)])
def test_sum_and_balance(rule, layers: int, stages: int) -> None:
    parts = rule(layers, stages)
    assert len(parts) == stages and sum(parts) == layers and max(parts) - min(parts) <= 1


def test_vllm_never_adds_to_last() -> None:
    assert vllm_default(10, 4) == [2, 3, 3, 2]


def test_rejects_more_stages_than_layers() -> None:
    with pytest.raises(ValueError, match="stages: 9 stages need"):
        vllm_default(8, 9)

"""The one user-error base: field, value and rule as data, one message form, picklable."""

from __future__ import annotations

import pickle

import pytest
from pydantic import BaseModel, ValidationError, field_validator

from ppplan.core.errors import NOT_GIVEN, PpplanError, shorten
from ppplan.core.gpus import UnknownGPUError, get_gpu
from ppplan.partitioner.search import InfeasibleError, PlanningError


def test_message_names_field_rule_and_value() -> None:
    err = PpplanError("gpus", "8xQ100", rule="must look like COUNTxKIND")
    assert str(err) == "gpus: must look like COUNTxKIND (got '8xQ100')"
    assert (err.field, err.value, err.rule) == ("gpus", "8xQ100", "must look like COUNTxKIND")


def test_value_already_in_the_rule_is_not_repeated() -> None:
    assert str(PpplanError("stage", 5, rule="5 is not a stage of plan ab5c")) == "stage: 5 is not a stage of plan ab5c"
    # a digit inside another token does not count as showing the value
    assert str(PpplanError("stage", 5, rule="not a stage of plan ab5c")).endswith("(got 5)")
    assert str(PpplanError("model", rule="empty")) == "model: empty"
    assert PpplanError("model").value is NOT_GIVEN


def test_echoed_values_are_cut() -> None:
    err = PpplanError("body", "x" * 10_000, rule="too long")
    assert len(str(err)) < 300 and str(err).endswith("…)")
    assert len(shorten("y" * 1000, 50)) == 50


def test_subclasses_keep_details_and_pickle() -> None:
    err = InfeasibleError("gpus", rule="does not fit", needed_bytes=10, available_bytes=5)
    assert isinstance(err, PlanningError) and isinstance(err, PpplanError)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is InfeasibleError
    assert (back.field, back.rule, back.details, str(back)) == (err.field, err.rule, err.details, str(err))


def test_catalog_lookup_raises_the_base() -> None:
    with pytest.raises(UnknownGPUError) as info:
        get_gpu("Q100")
    assert isinstance(info.value, PpplanError) and info.value.field == "gpus"


def test_pydantic_validators_wrap_it_as_a_field_error() -> None:
    class M(BaseModel):
        n: int

        @field_validator("n")
        @classmethod
        def _check(cls, v: int) -> int:
            if v < 0:
                raise PpplanError("n", v, rule="must be ≥ 0")
            return v

    with pytest.raises(ValidationError, match=r"n: must be ≥ 0 \(got -1\)"):
        M(n=-1)

"""Element sizes and quantisation overheads of the weight and KV-cache dtypes the planner knows.

All sizes are bytes. Quantised formats carry their scales: the overhead is computed from the real
weight shapes (see :func:`linear_weight_bytes`), never a flat factor.
"""

from __future__ import annotations

import math
from typing import Literal

WeightDtype = Literal["bf16", "fp16", "fp8", "int8", "int4"]
KVDtype = Literal["bf16", "fp16", "fp8"]

WEIGHT_DTYPES: tuple[str, ...] = ("bf16", "fp16", "fp8", "int8", "int4")
KV_DTYPES: tuple[str, ...] = ("bf16", "fp16", "fp8")

#: bytes per element of the stored values (int4 packs two values in a byte)
ELEMENT_BYTES: dict[str, float] = {"bf16": 2.0, "fp16": 2.0, "fp32": 4.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}

#: int4 (W4A16, GPTQ/AWQ/compressed-tensors style): one bf16 scale per group of this many inputs
INT4_GROUP_SIZE = 128
#: fp8 (DeepSeek-V3 / vLLM block quantisation): one fp32 scale per block of this many rows × columns
FP8_BLOCK = 128

#: what each weight dtype means for compute: the tensor-core rate used for the GEMMs
COMPUTE_DTYPE: dict[str, str] = {"bf16": "bf16", "fp16": "fp16", "fp8": "fp8", "int8": "int8", "int4": "bf16"}

QUANTIZATION_NOTES: dict[str, str] = {
    "bf16": "all weights bf16",
    "fp16": "all weights fp16",
    "fp8": "linear layers fp8 (W8A8) with one fp32 scale per 128x128 block; embedding, LM head, "
    "norms and routers kept in bf16 as quantised checkpoints do",
    "int8": "linear layers int8 (W8A8) with one fp32 scale per output channel; embedding, LM head, "
    "norms and routers kept in bf16",
    "int4": f"linear layers int4 (W4A16) with one bf16 scale per group of {INT4_GROUP_SIZE} inputs; "
    "embedding, LM head, norms and routers kept in bf16",
}


def element_bytes(dtype: str) -> float:
    """Bytes per element of ``dtype``.

    Raises:
        ValueError: for an unknown dtype, naming the known ones.
    """
    try:
        return ELEMENT_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}: expected one of {', '.join(ELEMENT_BYTES)}") from None


def unquantized_dtype(weight_dtype: str) -> str:
    """The dtype kept for embedding, head, norms and routers under ``weight_dtype`` (bf16 or fp16)."""
    return "fp16" if weight_dtype == "fp16" else "bf16"


def linear_weight_bytes(shape: tuple[int, ...], dtype: str) -> int:
    """Bytes of one linear weight of ``shape`` (``(out, in)`` or ``(experts, a, b)``) stored in ``dtype``.

    The scales of quantised formats are included: int4 one bf16 scale per ``INT4_GROUP_SIZE`` inputs
    (symmetric, no zero points), int8 one fp32 scale per output channel, fp8 one fp32 scale per
    ``FP8_BLOCK`` x ``FP8_BLOCK`` block.
    """
    if len(shape) < 2:
        raise ValueError(f"a linear weight has at least 2 dimensions, got shape {shape}")
    *lead, rows, cols = shape
    groups = math.prod(lead) if lead else 1
    n = groups * rows * cols
    if dtype in ("bf16", "fp16"):
        return 2 * n
    if dtype == "fp8":
        return n + groups * math.ceil(rows / FP8_BLOCK) * math.ceil(cols / FP8_BLOCK) * 4
    if dtype == "int8":
        # the reduction dimension is the last one for nn.Linear (out, in); one scale per other row
        return n + groups * rows * 4
    if dtype == "int4":
        return math.ceil(n / 2) + groups * rows * math.ceil(cols / INT4_GROUP_SIZE) * 2
    raise ValueError(f"unknown weight dtype {dtype!r}: expected one of {', '.join(WEIGHT_DTYPES)}")

"""The GPU catalog: memory, peak FLOP/s, HBM and link bandwidths, cited from vendor datasheets.

Data lives in ``ppplan/core/data/gpus.json``; this module only loads and looks it up (no torch).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ppplan.core.errors import PpplanError

__all__ = ["GPUSpec", "UnknownGPUError", "core_data", "get_gpu", "list_gpus"]

GIB = 1024**3


class UnknownGPUError(PpplanError):
    """A GPU name that is not in the catalog; the message lists the known names."""


class GPUSpec(BaseModel):
    """One GPU kind. Bandwidths are per GPU and per direction; FLOP/s are dense tensor-core peaks."""

    model_config = ConfigDict(frozen=True)

    name: str
    aliases: list[str] = Field(default_factory=list)
    hbm_bytes: int = Field(gt=0, description="device memory, bytes")
    hbm_bw: float = Field(gt=0, description="memory bandwidth, bytes/s")
    flops: dict[str, float] = Field(description="dense peak FLOP/s per compute dtype")
    nvlink_bw: float = Field(gt=0, description="GPU-to-GPU bandwidth inside a node, bytes/s per direction")
    network_bw: float = Field(gt=0, description="bandwidth across nodes per GPU, bytes/s per direction")
    gpus_per_node: int = Field(8, gt=0)
    sms: int | None = Field(None, gt=0, description="streaming multiprocessors (GEMM wave quantisation)")
    interconnect: str = Field("host", description="intra-node link kind: nvlink<gen>-nvswitch, pcie<gen>, host")
    source: str = ""
    sms_source: str = ""

    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s for ``dtype``; a dtype without tensor cores here runs at the bf16 rate."""
        return self.flops.get(dtype, self.flops["bf16"])

    @property
    def hbm_gib(self) -> float:
        """Device memory in GiB."""
        return self.hbm_bytes / GIB


@cache
def core_data(name: str) -> dict[str, Any]:
    """A JSON file of ``ppplan/core/data`` (the catalog, the fitted kernel and collective data): the
    one place the pure core reads package data."""
    if name == "kernels.json":
        text = (resources.files("ppplan.core") / "data" / "kernels.json").read_text()
    elif name == "collectives.json":
        text = (resources.files("ppplan.core") / "data" / "collectives.json").read_text()
    else:
        text = (resources.files("ppplan.core") / "data" / "gpus.json").read_text()
    return dict(json.loads(text))


@cache
def _catalog() -> tuple[GPUSpec, ...]:
    data = core_data("gpus.json")
    return tuple(GPUSpec(**g) for g in data["gpus"])


def list_gpus() -> list[GPUSpec]:
    """All GPUs in the catalog."""
    return list(_catalog())


def _norm(s: str) -> str:
    return s.upper().replace("_", "-").replace(" ", "")


def get_gpu(name: str, field: str = "gpus") -> GPUSpec:
    """Look a GPU up by name or alias (case-insensitive); ``field`` names the option in errors.

    Raises:
        UnknownGPUError: naming the value and the known GPUs.
    """
    key = _norm(name)
    for g in _catalog():
        if key == _norm(g.name) or key in (_norm(a) for a in g.aliases):
            return g
    known = ", ".join(g.name for g in _catalog())
    raise UnknownGPUError(field, rule=f"unknown GPU kind {name!r}; known: {known}")

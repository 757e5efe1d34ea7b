"""What a user asks for: model, GPUs, workload, objective. The same fields as ``ppplan plan``'s options."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ppplan.core.errors import PpplanError
from ppplan.core.gpus import GPUSpec, get_gpu

__all__ = ["MAX_GPUS", "Objective", "PlanRequest", "parse_gpus"]

Objective = Literal["throughput", "latency", "min-gpus"]
_GPUS_RE = re.compile(r"^\s*(\d+)\s*[xX×*]\s*([A-Za-z0-9_.\- ]+?)\s*$")


def parse_gpus(text: str) -> tuple[int, GPUSpec]:
    """Parse ``"8xH100"`` into (count, GPU spec).

    Raises:
        ValueError: a malformed string, a count < 1 or an unknown GPU kind, naming the rule.
    """
    m = _GPUS_RE.match(text or "")
    if not m:
        raise PpplanError("gpus", rule=f"{text!r} must look like COUNTxKIND, e.g. 8xH100")
    count = int(m.group(1))
    if count < 1:
        raise PpplanError("gpus", rule=f"count must be at least 1, got {count}")
    if count > MAX_GPUS:
        raise PpplanError(
            "gpus", rule=f"{count} GPUs exceed the {MAX_GPUS} one plan may cover (plan a pod and replicate it)"
        )
    return count, get_gpu(m.group(2))


#: GPUs one request may plan for; the exact search enumerates every TP × PP × replica split
MAX_GPUS = 4096


class PlanRequest(BaseModel):
    """A planning request. Sizes in tokens, times in milliseconds, memory in GiB."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    model: str = Field(description="bundled preset name or path to a Hugging Face config.json")
    gpus: str = Field(description="COUNTxKIND, e.g. 8xH100")
    nodes: int | None = Field(
        None, ge=1, le=MAX_GPUS, strict=True, description="nodes the GPUs are spread over (default: as few as fit)"
    )
    weight_dtype: Literal["bf16", "fp16", "fp8", "int8", "int4"] = "bf16"
    kv_dtype: Literal["bf16", "fp16", "fp8"] = "bf16"
    prompt_tokens: int = Field(2048, ge=1, le=10_000_000, strict=True, description="prompt length per request")
    output_tokens: int = Field(512, ge=1, le=10_000_000, strict=True, description="generated tokens per request")
    concurrency: int = Field(64, ge=1, le=1_000_000, strict=True, description="sequences in flight across all replicas")
    context: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        strict=True,
        description="KV tokens to reserve per sequence (default prompt + output)",
    )
    objective: Objective = "throughput"
    max_tpot_ms: float | None = Field(None, gt=0, description="SLO: time per output token, ms")
    max_ttft_ms: float | None = Field(None, gt=0, description="SLO: time to first token, ms")
    tp: int | None = Field(None, ge=1, le=MAX_GPUS, strict=True, description="pin the tensor-parallel degree")
    pp: int | None = Field(None, ge=1, le=MAX_GPUS, strict=True, description="pin the pipeline-parallel degree")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="share of HBM the engine may use")
    runtime_reserve_gib: float = Field(2.0, ge=0, le=1024, description="CUDA context, NCCL and graph buffers per GPU")
    prefill_chunk_tokens: int = Field(
        8192, ge=1, le=10_000_000, strict=True, description="tokens per prefill chunk (workspace sizing)"
    )
    profile: str | None = Field(None, description="a profile file or stored profile id (default: analytic)")
    solver: Literal["dp", "cpsat"] = Field(
        "dp",
        description="solver of the chosen configuration's cut: dp "
        "(exact) or cpsat (OR-Tools, hinted with the DP cut, gap reported)",
    )

    @field_validator("gpus")
    @classmethod
    def _check_gpus(cls, v: str) -> str:
        parse_gpus(v)
        return v

    @field_validator("weight_dtype", "kv_dtype", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self) -> PlanRequest:
        if self.context is not None and self.context < self.prompt_tokens + self.output_tokens:
            raise PpplanError(
                "context",
                rule=f"{self.context} tokens cannot hold prompt_tokens + output_tokens = "
                f"{self.prompt_tokens + self.output_tokens}; raise context or leave it unset",
            )
        count, _ = parse_gpus(self.gpus)
        if self.nodes is not None and self.nodes > count:
            raise PpplanError("nodes", rule=f"{self.nodes} nodes cannot hold {count} GPUs (at least one GPU per node)")
        if self.nodes is not None and count % self.nodes:
            raise PpplanError("nodes", rule=f"{count} GPUs do not split evenly over {self.nodes} nodes")
        if (self.tp or 1) * (self.pp or 1) > count:
            raise PpplanError(
                "tp × pp",
                rule=f"{self.tp or 1} × {self.pp or 1} = {(self.tp or 1) * (self.pp or 1)} GPUs, "
                f"only {count} available",
            )
        usable = self.gpu_memory_utilization * parse_gpus(self.gpus)[1].hbm_gib
        if self.runtime_reserve_gib >= usable:
            raise PpplanError(
                "runtime_reserve_gib",
                rule=f"{self.runtime_reserve_gib:g} GiB leaves no room in the "
                f"{usable:.1f} GiB the engine may use ({self.gpu_memory_utilization:g} × "
                f"{parse_gpus(self.gpus)[1].hbm_gib:.0f} GiB)",
            )
        return self

    @property
    def gpu_count(self) -> int:
        """Number of GPUs in the cluster."""
        return parse_gpus(self.gpus)[0]

    @property
    def gpu(self) -> GPUSpec:
        """The GPU kind."""
        return parse_gpus(self.gpus)[1]

    @property
    def kv_context(self) -> int:
        """KV tokens per sequence the memory check reserves."""
        return self.context if self.context is not None else self.prompt_tokens + self.output_tokens

"""Plan JSON v1: the planner's answer as plain data (documented in docs/plan-json-v1.md).

The JSON Schema in ``ppplan/partitioner/schema/plan-v1.schema.json`` is generated from these models
(``python -m ppplan.partitioner.plan > ppplan/partitioner/schema/plan-v1.schema.json``) and a test keeps the two equal.
Every predicted figure is traceable: ``provenance`` names the profile (id and kind), the cost model
version, its efficiency factors and the solver; each stage says where its times came from.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ppplan.core.profile import ModelIdentity

__all__ = [
    "PLAN_SCHEMA_MINOR",
    "PLAN_SCHEMA_VERSION",
    "Baseline",
    "BaselineStage",
    "Candidate",
    "ClusterInfo",
    "Degrees",
    "Metrics",
    "Plan",
    "Provenance",
    "Schedule",
    "StageMemory",
    "StagePlan",
    "StageTimes",
    "UnitCost",
    "WorkloadInfo",
]

PLAN_SCHEMA_VERSION = 1
PLAN_SCHEMA_MINOR = 1

_F = ConfigDict(frozen=True)


class ClusterInfo(BaseModel):
    """The GPUs planned for."""

    model_config = _F
    gpu: str = Field(description="GPU catalog name")
    count: int
    nodes: int
    gpus_per_node: int
    hbm_gib: float = Field(description="memory per GPU, GiB")
    usable_gib: float = Field(description="gpu_memory_utilization × HBM, GiB")
    nvlink_gbps: float = Field(description="GPU-to-GPU bandwidth inside a node, GB/s per direction")
    network_gbps: float = Field(description="bandwidth across nodes per GPU, GB/s per direction")
    groups: list[dict[str, object]] = Field(
        default_factory=list,
        description="mixed clusters: every GPU group in cluster order (gpu, nodes, gpus_per_node, count, "
        "interconnect, usable_gib, stages it hosts, hosts when named); global GPU ids and node indices "
        "follow this order. Empty for one GPU kind",
    )


class WorkloadInfo(BaseModel):
    """The traffic planned for."""

    model_config = _F
    prompt_tokens: int
    output_tokens: int
    concurrency: int = Field(description="sequences in flight across all replicas (planned batch × replicas)")
    context: int = Field(description="longest sequence admitted (max-model-len), tokens")
    concurrency_source: str = Field("pinned", description="pinned (the request's) or searched (the planner's)")
    prompt_tokens_sd: float | None = Field(None, description="standard deviation of the prompt length")
    output_tokens_sd: float | None = Field(None, description="standard deviation of the output length")
    kv_tokens_per_sequence: int | None = Field(
        None, description="KV tokens reserved per sequence in flight (paged: prompt + half the output + margin)"
    )
    token_budget: int | None = Field(None, description="tokens per engine step (decode + prefill chunk)")
    request_rate: float | None = Field(None, description="requests/s over all replicas the latencies are for")
    request_rate_source: str | None = Field(None, description="given, or a share of the capacity when none is")
    engine: str | None = Field(None, description="engine whose KV block size and memory model were assumed")


class Degrees(BaseModel):
    """Parallel degrees of a plan."""

    model_config = _F
    tp: int = Field(description="tensor-parallel GPUs per stage")
    pp: int = Field(description="pipeline stages per replica")
    replicas: int = Field(description="independent copies of the model (data parallel)")
    micro_batches: int = Field(description="micro-batches in flight per replica")
    micro_batch_size: int = Field(description="sequences per micro-batch")
    gpus_used: int
    ep: int = Field(1, description="expert-parallel degree of MoE layers (1: experts split by TP like dense layers)")
    attention_dp: int = Field(1, description="data-parallel attention ranks per stage (1: TP attention)")


class StageTimes(BaseModel):
    """Predicted times of one stage, milliseconds."""

    model_config = _F
    decode_ms: float = Field(description="one decode step of a micro-batch")
    prefill_ms: float = Field(description="prefill of one prompt")
    send_ms: float = Field(description="send of a decode micro-batch's activations to the next stage")
    busy_ms: float = Field(description="per micro-batch per cycle: decode + amortised prefill chunk + send")
    source: str = Field(description="which profile and model produced these times")


class StageMemory(BaseModel):
    """Memory of each GPU of one stage, GiB."""

    model_config = _F
    weights_gib: float
    kv_cache_gib: float = Field(description="KV cache at the planned batch (paged: mean tokens per sequence)")
    workspace_gib: float = Field(description="largest transient activation of a prefill chunk")
    reserve_gib: float = Field(description="runtime reserve (CUDA context, NCCL, graphs)")
    total_gib: float
    limit_gib: float
    free_gib: float = Field(description="limit - total: room for KV beyond the target")


class StagePlan(BaseModel):
    """One pipeline stage."""

    model_config = _F
    index: int
    units: tuple[int, int] = Field(description="first and last planning unit, inclusive")
    decoder_layers: tuple[int, int] = Field(description="first and last decoder layer, inclusive (0-based)")
    num_decoder_layers: int
    has_embedding: bool
    has_lm_head: bool
    modules: list[str] = Field(description="module names (torch pipelining)")
    devices: list[int] = Field(description="global GPU ids of this stage in replica 0")
    node: int
    times: StageTimes
    memory: StageMemory
    kv_capacity_tokens: int = Field(
        description="KV tokens that fit with all free memory given to KV: sequences × "
        "context (sliding-window layers hold only their window of each sequence)"
    )
    kv_capacity_sequences: float = Field(description="sequences of `context` tokens the stage holds")
    gpu: str | None = Field(None, description="GPU kind of this stage (mixed clusters)")


class Schedule(BaseModel):
    """The pipeline schedule of one replica."""

    model_config = _F
    micro_batches: int
    micro_batch_size: int
    cycle_ms: float = Field(description="time for every micro-batch to pass every stage once")
    bottleneck_stage: int
    bubble_fraction: float = Field(description="share of a cycle the bottleneck stage idles (M < PP)")
    description: str
    name: str | None = Field(None, description="the schedule's name")


class Metrics(BaseModel):
    """Predicted headline numbers."""

    model_config = _F
    throughput_tokens_per_s: float = Field(description="decode tokens/s over all replicas")
    throughput_per_gpu: float
    tpot_ms: float = Field(description="time per output token of one sequence")
    ttft_ms: float = Field(description="time to first token of one request on an idle replica")
    ttft_p50_ms: float | None = Field(None, description="median TTFT at the request rate (workload.request_rate)")
    ttft_p90_ms: float | None = Field(None, description="90th-percentile TTFT at the request rate")
    tokens_per_s_per_user: float | None = Field(None, description="1000 / tpot_ms: output tokens/s one user sees")
    capacity_requests_per_s: float | None = Field(None, description="requests/s all replicas sustain")
    kv_capacity_tokens: int = Field(
        description="KV tokens per replica the engine can allocate (tightest stage; sequences × context)"
    )
    max_concurrency: float = Field(description="sequences of `context` tokens per replica that fit")
    slo_met: bool
    predicted_by: str = Field(description="profile label and cost model version")


class Baseline(BaseModel):
    """An engine's default cut with the same degrees."""

    model_config = _F
    engine: Literal["vllm", "sglang", "trtllm"]
    partition: list[int] = Field(description="decoder layers per stage")
    feasible: bool
    reason: str | None = None
    bottleneck_ms: float | None = None
    throughput_tokens_per_s: float | None = None
    tpot_ms: float | None = None
    kv_capacity_tokens: int | None = None
    throughput_gain: float | None = Field(None, description="plan / baseline - 1")
    kv_capacity_gain: float | None = Field(None, description="plan / baseline - 1 (tightest stage)")
    stages: list[BaselineStage] = Field(default_factory=list)


class Candidate(BaseModel):
    """A configuration the search scored (runner-ups and the Pareto set)."""

    model_config = _F
    degrees: Degrees
    partition: list[int] | None = None
    throughput_tokens_per_s: float
    throughput_per_gpu: float
    tpot_ms: float
    ttft_ms: float
    slo_met: bool
    tokens_per_s_per_user: float | None = Field(None, description="1000 / tpot_ms")
    ttft_p90_ms: float | None = None
    chosen: bool = Field(False, description="this point is the plan")


class UnitCost(BaseModel):
    """One planning unit of the chosen layout: embedding, a decoder layer, or norm + LM head."""

    model_config = _F
    index: int
    name: str
    kind: str = Field(description="embed, decoder or head")
    stage: int
    decode_ms: float = Field(description="one decode step of a micro-batch")
    prefill_ms: float = Field(description="prefill of one prompt")
    weights_gib: float = Field(description="per GPU")
    kv_cache_gib: float = Field(description="per GPU, at the planned batch")


class BaselineStage(BaseModel):
    """Memory per GPU (GiB) and busy time (ms) of one stage of an engine's default cut."""

    model_config = _F
    weights_gib: float
    kv_cache_gib: float
    workspace_gib: float
    reserve_gib: float
    total_gib: float
    limit_gib: float
    busy_ms: float


class Provenance(BaseModel):
    """Where every number came from."""

    model_config = _F
    profile_id: str
    profile_kind: str
    profile_label: str
    cost_model: str
    time_source: str
    efficiency: dict[str, object]
    solver: str
    optimal: bool = Field(description="the cut is proven optimal for its degrees")
    gap: float = Field(0.0, description="relative optimality gap of the cut (0 when proven optimal)")
    solve_time_ms: float
    configs_evaluated: int
    ppplan_version: str
    created: str


class Plan(BaseModel):
    """A pipeline-parallel deployment plan (JSON v1)."""

    model_config = _F
    schema_version: Literal[1] = 1
    schema_minor: int = Field(0, description="minor version: 1 adds the searched batch, load and Pareto fields")
    model: ModelIdentity
    model_source: str
    request: dict[str, object] = Field(description="the PlanRequest, as sent")
    cluster: ClusterInfo
    workload: WorkloadInfo
    objective: str
    weight_dtype: str
    kv_dtype: str
    quantization: str
    degrees: Degrees
    partition: list[int] = Field(description="decoder layers per stage (the engines' format)")
    stages: list[StagePlan]
    schedule: Schedule
    metrics: Metrics
    baselines: list[Baseline]
    runner_ups: list[Candidate]
    pareto: list[Candidate] = Field(description="best output tokens/s per GPU vs tokens/s per user (1000 / TPOT)")
    candidates: list[Candidate] = Field(default_factory=list, description="configurations scored exactly")
    units: list[UnitCost] = Field(default_factory=list, description="per planning unit, along the model")
    exports: dict[str, dict[str, object]]
    provenance: Provenance
    notes: list[str] = Field(default_factory=list)


def json_schema() -> dict[str, object]:
    """The JSON Schema of Plan v1."""
    schema = Plan.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://ppplan.dev/schemas/plan-v1.schema.json"
    return schema


if __name__ == "__main__":
    print(json.dumps(json_schema(), indent=1, sort_keys=True))

"""Plain-data description of a model's planning units (no torch): what the analytic profile reads.

A :class:`ModelSpec` is produced by :mod:`profiler.models` from a real transformers model built on
the meta device, so every parameter count is exact for every architecture transformers knows.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ppplan.core.profile import MAX_EXPERTS, MAX_HEADS, MAX_PARAMS, ModelIdentity

UnitKind = Literal["embed", "decoder", "head"]
AttentionKind = Literal["full", "sliding", "mla", "none"]


class UnitSpec(BaseModel):
    """One planning unit: the token embedding, one decoder layer, or final norm + LM head."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(description="position 0..L+1 (0 = embedding, L+1 = norm + LM head)")
    kind: UnitKind
    layer: int | None = Field(None, description="decoder layer index 0..L-1, None for embed/head")
    modules: list[str] = Field(description="module names in the transformers model")
    signature: str = Field(description="class and parameter shapes; equal signatures are identical units")
    params: int = Field(ge=0, le=MAX_PARAMS, description="parameters held by this unit (tied LM head counts 0 here)")
    active_params: int = Field(
        ge=0, le=MAX_PARAMS, description="parameters used per token (MoE: shared + top-k experts)"
    )
    expert_params: int = Field(0, ge=0, le=MAX_PARAMS, description="routed-expert parameters (all experts)")
    num_experts: int = Field(0, ge=0, le=MAX_EXPERTS, description="routed experts (0 for a dense unit)")
    experts_per_token: int = Field(0, ge=0, le=MAX_EXPERTS, description="routed experts each token uses (top-k)")
    weight_bytes: dict[str, int] = Field(description="bytes of all weights per weight dtype, scales included")
    expert_weight_bytes: dict[str, int] = Field(default_factory=dict, description="routed experts' bytes")
    replicated_bytes: int = Field(0, description="bytes of 1-D parameters (norms, biases), copied per TP rank")
    kv_proj_bytes: dict[str, int] = Field(
        default_factory=dict, description="bytes of K/V projections (sharded over at most n_kv_heads ranks)"
    )
    attention: AttentionKind = "none"
    window: int | None = Field(None, description="sliding window in tokens (KV capped at it)")
    num_heads: int = Field(0, ge=0, le=MAX_HEADS, description="attention heads (0 for a unit without attention)")
    num_kv_heads: int = Field(0, ge=0, le=MAX_HEADS, description="KV heads (0 for a unit without attention)")
    kv_elems_per_token: int = Field(0, description="KV-cache elements per token as vLLM/SGLang store them")
    kv_elems_per_token_hf: int = Field(0, description="KV-cache elements per token in transformers' cache")
    kv_tp_shardable: bool = Field(True, description="False for MLA: the latent cache is replicated per TP rank")
    attn_flops_per_pair_prefill: int = Field(0, description="FLOPs per (query, key) pair in prefill")
    attn_flops_per_pair_decode: int = Field(0, description="FLOPs per (query, key) pair in decode")
    workspace_elems_per_token: int = Field(0, description="transient activation elements per token")
    tp_allreduces: int = Field(0, description="all-reduces per forward under tensor parallelism")


class ModelSpec(ModelIdentity):
    """A model's identity (the block profiles and plans carry) plus its planning units."""

    model_config = ConfigDict(frozen=True)

    units: list[UnitSpec]
    notes: list[str] = Field(default_factory=list)

    @property
    def decoder_units(self) -> list[UnitSpec]:
        """The decoder-layer units, in order."""
        return [u for u in self.units if u.kind == "decoder"]

    def module_names(self, first: int, last: int) -> list[str]:
        """Module names of units ``first..last`` (inclusive), for torch pipelining exports."""
        out: list[str] = []
        for u in self.units[first : last + 1]:
            out.extend(u.modules)
        return out

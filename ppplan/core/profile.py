"""The versioned Profile: per-unit costs of one model at one weight/KV dtype (plain data, no torch).

An *analytic* profile holds device-independent facts (bytes, FLOPs per token, KV bytes per token);
the cost model in :mod:`partitioner.costmodel` turns them into seconds for any GPU in the catalog.
A *measured* profile additionally holds measured times per unit on one GPU kind, which the cost
model interpolates wherever it has points. Both serialise to the same JSON (``schema_version`` 1).
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ppplan.core.errors import PpplanError

__all__ = [
    "PROFILE_SCHEMA_VERSION",
    "MeasuredPoint",
    "ModelIdentity",
    "Profile",
    "ProfileError",
    "UnitCost",
    "parse_profile",
]

PROFILE_SCHEMA_VERSION = 1
Phase = Literal["prefill", "decode"]


class ProfileError(PpplanError):
    """A profile file that cannot be used (missing, corrupt, wrong version, wrong model)."""


class MeasuredPoint(BaseModel):
    """One measured forward time of a unit.

    prefill: ``tokens`` = prompt length of one sequence, ``context`` = ``tokens``.
    decode: ``tokens`` = batch size (one new token per sequence), ``context`` = cached tokens.
    """

    model_config = ConfigDict(frozen=True)

    phase: Phase
    tokens: int = Field(gt=0)
    context: int = Field(ge=0)
    time_s: float = Field(gt=0, description="median of the timed steps, seconds")
    spread_s: float = Field(0.0, ge=0, description="interquartile range of the timed steps, seconds")
    peak_bytes: int | None = Field(None, ge=0, description="transient peak memory of the forward, bytes")


class UnitCost(BaseModel):
    """Costs of one planning unit at the profile's dtypes. All sizes in bytes, all FLOPs per token."""

    model_config = ConfigDict(frozen=True)

    index: int
    kind: Literal["embed", "decoder", "head"]
    layer: int | None = None
    modules: list[str]
    signature: str
    params: int = Field(ge=0)
    active_params: int = Field(ge=0)
    weight_bytes: int = Field(ge=0, description="weights at the profile's dtype (head: incl. a tied copy)")
    expert_weight_bytes: int = Field(0, ge=0, description="routed experts' share of weight_bytes")
    replicated_bytes: int = Field(0, ge=0, description="weights every TP rank holds whole (norms, biases)")
    kv_proj_bytes: int = Field(0, ge=0, description="K/V projection weights (sharded over ≤ n_kv_heads ranks)")
    num_experts: int = 0
    experts_per_token: int = 0
    linear_flops_per_token: int = Field(ge=0, description="2 × active matmul parameters")
    attention: Literal["full", "sliding", "mla", "none"] = "none"
    window: int | None = None
    num_kv_heads: int = 0
    kv_tp_shardable: bool = True
    kv_bytes_per_token: int = Field(0, ge=0, description="KV-cache bytes per cached token (engine layout)")
    kv_bytes_per_token_hf: int = Field(0, ge=0, description="KV-cache bytes per token in transformers' cache")
    attn_flops_per_pair_prefill: int = 0
    attn_flops_per_pair_decode: int = 0
    act_bytes_per_token: int = Field(ge=0, description="bytes per token crossing a stage boundary after it")
    allreduce_bytes_per_token: int = Field(0, ge=0, description="bytes per token of each TP all-reduce")
    tp_allreduces: int = 0
    workspace_bytes_per_token: int = Field(0, ge=0, description="transient activation bytes per token")
    measured: list[MeasuredPoint] = Field(default_factory=list)


class ModelIdentity(BaseModel):
    """Which model a profile or plan is about."""

    model_config = ConfigDict(frozen=True)

    name: str
    model_type: str
    architecture: str
    config_hash: str = Field(description="sha256 of the canonical config JSON")
    num_layers: int
    hidden_size: int
    vocab_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool
    max_position_embeddings: int | None = None
    total_params: int = Field(description="parameters of the built model, tied weights counted once")
    active_params: int = Field(description="parameters used per token, embedding excluded (MoE: shared + top-k)")


class Efficiency(BaseModel):
    """Fitted efficiency factors of the analytic model for one GPU kind (see ``ppplan calibrate``)."""

    model_config = ConfigDict(frozen=True)

    compute: float = Field(
        gt=0,
        le=100,
        description="achieved / catalog peak FLOP/s (> 1 only where the "
        "catalog's peak is nominal, as for the CPU pseudo-device)",
    )
    memory: float = Field(gt=0, le=100, description="achieved / catalog HBM bandwidth (> 1: nominal catalog figure)")
    overhead_s: float = Field(
        ge=0,
        description="fixed time per decoder layer per forward, seconds (kernel "
        "launches and dispatch: an eager decoder layer launches tens of kernels)",
    )
    embed_overhead_s: float | None = Field(
        None, ge=0, description="fixed time per embedding forward, seconds (one gather); None: the same as overhead_s"
    )
    head_overhead_s: float | None = Field(
        None, ge=0, description="fixed time per final norm + LM head forward, seconds; None: the same as overhead_s"
    )
    overlap: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of the smaller of compute and memory time that "
        "does not hide under the larger (0 = ideal roofline, 1 = no overlap)",
    )
    fit_error: dict[str, float] = Field(default_factory=dict, description="median relative error per phase")
    points: int = 0
    source: str = ""

    def overhead_of(self, kind: str) -> float:
        """Fixed seconds per forward of a unit of ``kind`` ('embed', 'decoder', 'head')."""
        own = {"embed": self.embed_overhead_s, "head": self.head_overhead_s}.get(kind)
        return self.overhead_s if own is None else own


class Profile(BaseModel):
    """Per-unit costs of one model (schema v1)."""

    model_config = ConfigDict(frozen=True)

    schema_version: Literal[1] = 1
    kind: Literal["analytic", "measured"]
    model: ModelIdentity
    weight_dtype: str
    kv_dtype: str
    act_dtype: str = "bf16"
    quantization: str = ""
    device: str | None = Field(None, description="GPU catalog name the measured points were taken on")
    units: list[UnitCost]
    calibration: dict[str, Efficiency] = Field(default_factory=dict, description="per GPU catalog name")
    provenance: dict[str, str | int | float | list[int] | None] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _units_cover_the_model(self) -> Profile:
        n = self.model.num_layers + 2
        if len(self.units) != n:
            raise PpplanError(
                "units",
                rule=f"{len(self.units)} units for a {self.model.num_layers}-layer model; "
                f"a profile has one per planning unit ({n}: embedding, layers, head)",
            )
        for i, u in enumerate(self.units):
            want = "embed" if i == 0 else "head" if i == n - 1 else "decoder"
            if u.index != i or u.kind != want:
                raise PpplanError(
                    f"units[{i}]",
                    rule=f"has index {u.index} and kind {u.kind!r}; expected index {i}, "
                    f"kind {want!r} (units in order: embedding, decoder layers, head)",
                )
        return self

    @property
    def profile_id(self) -> str:
        """Content hash (16 hex digits): the same model, dtypes, units and points give the same id."""
        body = self.model_dump(mode="json", exclude={"provenance"})
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """Short human name: kind, model, dtypes, device, id."""
        dev = f"@{self.device}" if self.device else ""
        return f"{self.kind}:{self.model.name}:{self.weight_dtype}/kv-{self.kv_dtype}{dev}#{self.profile_id}"

    def to_json(self) -> str:
        """The profile as JSON text (indent 1)."""
        return self.model_dump_json(indent=1)


def parse_profile(text: str, where: str) -> Profile:
    """A profile from its JSON text; ``where`` names its origin (a file path) in errors.

    Raises:
        ProfileError: invalid JSON, wrong schema version or invalid fields.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError("profile", rule=f"{where!r} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("schema_version") != PROFILE_SCHEMA_VERSION:
        got = data.get("schema_version") if isinstance(data, dict) else None
        raise ProfileError(
            "profile", rule=f"{where!r} has schema_version {got!r}; this ppplan reads version {PROFILE_SCHEMA_VERSION}"
        )
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise ProfileError("profile", rule=f"{where!r} field {loc}: {first['msg']}") from None

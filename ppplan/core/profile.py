"""The versioned Profile: per-unit costs of one model at one weight/KV dtype (plain data, no torch).

An *analytic* profile holds device-independent facts (bytes, FLOPs per token, KV bytes per token);
the cost model in :mod:`partitioner.costmodel` turns them into seconds for any GPU in the catalog.
A *measured* profile additionally holds measured times per unit on one GPU kind, which the cost
model interpolates wherever it has points. Both serialise to the same JSON (``schema_version`` 1).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ppplan.core.errors import PpplanError, shorten
from ppplan.core.text import check_strings

__all__ = [
    "PROFILE_SCHEMA_VERSION",
    "MeasuredPoint",
    "ModelIdentity",
    "Profile",
    "ProfileError",
    "UnitCost",
    "parse_profile",
    "profile_from_data",
]

PROFILE_SCHEMA_VERSION = 1
Phase = Literal["prefill", "decode"]

# Physical bounds of profile fields. Every number must also be finite (no NaN or ±Infinity: JSON has
# neither, PostgreSQL refuses them in a JSON document, SQLite serves them back as null). The bounds
# are far above any real model, yet low enough that sums and products of them stay finite floats.
MAX_BYTES = 10**15
"""Largest byte count: 1 PB, ~1,000x the HBM of a 1,000-GPU pod (a 2T-parameter model in fp32 is 8e12)."""
MAX_PARAMS = 10**15
"""Largest parameter count: 1e15, ~500x the largest published model."""
MAX_FLOPS = 10**18
"""Largest FLOPs per token (or per query-key pair): 2 FLOPs per parameter of a 1e15-parameter model is 2e15."""
MAX_SECONDS = 1e6
"""Bound (exclusive) on a measured or fitted time, seconds: ~11.6 days for one forward pass."""
MAX_TOKENS = 2**31 - 1
"""Largest token count or context of a measured point."""
MAX_LAYERS = 4096
"""Largest number of decoder layers (the config check's bound)."""
MAX_HEADS = 4096
"""Largest number of attention or KV heads (the config check's bound)."""
MAX_EXPERTS = 1 << 16
"""Largest number of routed experts (the config check's bound)."""
MAX_POINTS = 100_000
"""Most measured points one unit may carry."""


class ProfileError(PpplanError):
    """A profile file that cannot be used (missing, corrupt, wrong version, wrong model)."""


class MeasuredPoint(BaseModel):
    """One measured forward time of a unit.

    prefill: ``tokens`` = prompt length of one sequence, ``context`` = ``tokens``.
    decode: ``tokens`` = batch size (one new token per sequence), ``context`` = cached tokens.
    """

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    phase: Phase
    tokens: int = Field(gt=0, le=MAX_TOKENS)
    context: int = Field(ge=0, le=MAX_TOKENS)
    time_s: float = Field(gt=0, lt=MAX_SECONDS, description="median of the timed steps, seconds (0 < t < 1e6)")
    spread_s: float = Field(
        0.0, ge=0, lt=MAX_SECONDS, description="interquartile range of the timed steps, seconds (0 ≤ t < 1e6)"
    )
    peak_bytes: int | None = Field(
        None, ge=0, le=MAX_BYTES, description="transient peak memory of the forward, bytes (≤ 1e15)"
    )


class UnitCost(BaseModel):
    """Costs of one planning unit at the profile's dtypes. All sizes in bytes, all FLOPs per token.

    Bounds: bytes ≤ 1e15 (:data:`MAX_BYTES`), parameters ≤ 1e15, FLOPs ≤ 1e18 (:data:`MAX_FLOPS`),
    every number finite; a unit with attention has at least one KV head.
    """

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    index: int = Field(ge=0, le=MAX_LAYERS + 1)
    kind: Literal["embed", "decoder", "head"]
    layer: int | None = Field(None, ge=0, lt=MAX_LAYERS)
    modules: list[str]
    signature: str
    params: int = Field(ge=0, le=MAX_PARAMS)
    active_params: int = Field(ge=0, le=MAX_PARAMS)
    weight_bytes: int = Field(
        ge=0, le=MAX_BYTES, description="weights at the profile's dtype (head: incl. a tied copy)"
    )
    expert_weight_bytes: int = Field(0, ge=0, le=MAX_BYTES, description="routed experts' share of weight_bytes")
    replicated_bytes: int = Field(
        0, ge=0, le=MAX_BYTES, description="weights every TP rank holds whole (norms, biases)"
    )
    kv_proj_bytes: int = Field(
        0, ge=0, le=MAX_BYTES, description="K/V projection weights (sharded over ≤ n_kv_heads ranks)"
    )
    num_experts: int = Field(0, ge=0, le=MAX_EXPERTS)
    experts_per_token: int = Field(0, ge=0, le=MAX_EXPERTS)
    linear_flops_per_token: int = Field(ge=0, le=MAX_FLOPS, description="2 × active matmul parameters")
    attention: Literal["full", "sliding", "mla", "none"] = "none"
    window: int | None = Field(None, ge=1, le=MAX_TOKENS)
    num_kv_heads: int = Field(0, ge=0, le=MAX_HEADS, description="KV heads (≥ 1 when the unit has attention)")
    kv_tp_shardable: bool = True
    kv_bytes_per_token: int = Field(
        0, ge=0, le=MAX_BYTES, description="KV-cache bytes per cached token (engine layout)"
    )
    kv_bytes_per_token_hf: int = Field(
        0, ge=0, le=MAX_BYTES, description="KV-cache bytes per token in transformers' cache"
    )
    attn_flops_per_pair_prefill: int = Field(0, ge=0, le=MAX_FLOPS)
    attn_flops_per_pair_decode: int = Field(0, ge=0, le=MAX_FLOPS)
    act_bytes_per_token: int = Field(
        ge=0, le=MAX_BYTES, description="bytes per token crossing a stage boundary after it"
    )
    allreduce_bytes_per_token: int = Field(0, ge=0, le=MAX_BYTES, description="bytes per token of each TP all-reduce")
    tp_allreduces: int = Field(0, ge=0, le=1024)
    workspace_bytes_per_token: int = Field(0, ge=0, le=MAX_BYTES, description="transient activation bytes per token")
    measured: list[MeasuredPoint] = Field(default_factory=list, max_length=MAX_POINTS)

    @model_validator(mode="after")
    def _consistent(self) -> UnitCost:
        if self.attention != "none" and self.num_kv_heads < 1:
            raise PpplanError(
                "num_kv_heads",
                self.num_kv_heads,
                rule=f"a unit with {self.attention} attention needs at least one KV head",
            )
        if self.experts_per_token > self.num_experts:
            raise PpplanError(
                "experts_per_token",
                self.experts_per_token,
                rule=f"exceeds the unit's {self.num_experts} routed experts",
            )
        return self


class ModelIdentity(BaseModel):
    """Which model a profile or plan is about. Sizes and head counts are at least 1 and within the
    bounds the config check applies (:func:`ppplan.profiler.configs.check_config`)."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    name: str
    model_type: str
    architecture: str
    config_hash: str = Field(description="sha256 of the canonical config JSON")
    num_layers: int = Field(ge=1, le=MAX_LAYERS)
    hidden_size: int = Field(ge=1, le=1 << 18)
    vocab_size: int = Field(ge=1, le=1 << 24)
    num_attention_heads: int = Field(ge=1, le=MAX_HEADS)
    num_kv_heads: int = Field(ge=1, le=MAX_HEADS)
    head_dim: int = Field(ge=1, le=1 << 14)
    tie_word_embeddings: bool
    max_position_embeddings: int | None = Field(None, ge=1, le=1 << 27)
    total_params: int = Field(
        ge=0, le=MAX_PARAMS, description="parameters of the built model, tied weights counted once"
    )
    active_params: int = Field(
        ge=0, le=MAX_PARAMS, description="parameters used per token, embedding excluded (MoE: shared + top-k)"
    )


class Efficiency(BaseModel):
    """Fitted efficiency factors of the analytic model for one GPU kind (see ``ppplan calibrate``).
    Every number finite; times below :data:`MAX_SECONDS`."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    compute: float = Field(
        gt=0,
        le=100,
        description="achieved / catalog peak FLOP/s (> 1 only where the "
        "catalog's peak is nominal, as for the CPU pseudo-device)",
    )
    memory: float = Field(gt=0, le=100, description="achieved / catalog HBM bandwidth (> 1: nominal catalog figure)")
    overhead_s: float = Field(
        ge=0,
        lt=MAX_SECONDS,
        description="fixed time per decoder layer per forward, seconds (kernel "
        "launches and dispatch: an eager decoder layer launches tens of kernels)",
    )
    embed_overhead_s: float | None = Field(
        None,
        ge=0,
        lt=MAX_SECONDS,
        description="fixed time per embedding forward, seconds (one gather); None: the same as overhead_s",
    )
    head_overhead_s: float | None = Field(
        None,
        ge=0,
        lt=MAX_SECONDS,
        description="fixed time per final norm + LM head forward, seconds; None: the same as overhead_s",
    )
    overlap: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of the smaller of compute and memory time that "
        "does not hide under the larger (0 = ideal roofline, 1 = no overlap)",
    )
    fit_error: dict[str, float] = Field(default_factory=dict, description="median relative error per phase")
    points: int = Field(0, ge=0)
    source: str = ""
    kernels: dict[str, Any] | None = Field(
        None,
        description="coefficients of the shape-aware kernel model (ppplan.core.kernels, with 'engine') "
        "fitted to measured kernel tables; None: the roofline with the factors above",
    )

    def overhead_of(self, kind: str) -> float:
        """Fixed seconds per forward of a unit of ``kind`` ('embed', 'decoder', 'head')."""
        own = {"embed": self.embed_overhead_s, "head": self.head_overhead_s}.get(kind)
        return self.overhead_s if own is None else own


class Profile(BaseModel):
    """Per-unit costs of one model (schema v1). Every number finite and within the bounds above;
    no text holds a control character (PostgreSQL cannot store a NUL byte)."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    schema_version: Literal[1] = 1
    kind: Literal["analytic", "measured"]
    model: ModelIdentity
    weight_dtype: str
    kv_dtype: str
    act_dtype: str = "bf16"
    quantization: str = ""
    device: str | None = Field(None, description="GPU catalog name the measured points were taken on")
    units: list[UnitCost] = Field(max_length=MAX_LAYERS + 2)
    calibration: dict[str, Efficiency] = Field(default_factory=dict, description="per GPU catalog name")
    provenance: dict[str, str | int | float | list[int] | None] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _plain_text(cls, data: Any) -> Any:
        if isinstance(data, dict):
            check_strings(data, "")
        return data

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


def profile_from_data(data: Any, where: str) -> Profile:
    """A profile from its parsed JSON (a file's, a request's or a stored row's); ``where`` names its
    origin in errors.

    Raises:
        ProfileError: wrong schema version or an invalid field, naming the field, the rule and the value.
    """
    if not isinstance(data, dict) or data.get("schema_version") != PROFILE_SCHEMA_VERSION:
        got = data.get("schema_version") if isinstance(data, dict) else None
        raise ProfileError(
            "profile",
            rule=f"{where!r} has schema_version {shorten(got)}; this ppplan reads version {PROFILE_SCHEMA_VERSION}",
        )
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        got = first.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {shorten(got)})"
        at = f"field {loc}: " if loc else ""  # a model-level rule names its field itself
        raise ProfileError(
            "profile", rule=f"{where!r} {at}{first['msg'].removeprefix('Value error, ')}{shown}"
        ) from None


def parse_profile(text: str, where: str) -> Profile:
    """A profile from its JSON text; ``where`` names its origin (a file path) in errors.

    Raises:
        ProfileError: invalid JSON, wrong schema version or invalid fields.
    """
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, over-long integers, deep nesting
        raise ProfileError("profile", rule=f"{where!r} is not valid JSON ({type(exc).__name__}: {exc})") from None
    return profile_from_data(data, where)

"""What a user asks for: model, GPUs, workload, objective. The same fields as ``ppplan plan``'s options.

Text fields are normalised as they are validated, so that spellings of one request hash to one id:
the model name is NFKC-normalised, stripped and case-folded (unless it is a path, see
:func:`is_model_path`), the GPUs are written ``COUNTxNAME`` with the catalog's name
(``"８×h100"`` → ``"8xH100-SXM-80GB"``).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ppplan.core.errors import PpplanError, shorten
from ppplan.core.gpus import GPUSpec, get_gpu
from ppplan.core.text import check_text, normalize_name

if TYPE_CHECKING:
    from ppplan.partitioner.cluster import Cluster

__all__ = ["MAX_GPUS", "Engine", "Objective", "PlanRequest", "is_model_path", "parse_gpus"]

Objective = Literal["throughput", "latency", "min-gpus"]
Engine = Literal["vllm", "sglang", "trtllm"]
Histogram = tuple[tuple[int, float], ...]
"""(tokens, weight) pairs of a length distribution"""
# after NFKC: full-width digits and letters are ASCII, "×" stays a multiplication sign
_GPUS_RE = re.compile(r"^(\d+)\s*[xX×*]\s*([A-Za-z0-9_.\- ]+?)$")
_ASCII_COUNT = re.compile(r"[0-9]+", re.ASCII)
MAX_TEXT = 4096
"""Longest model path or profile name accepted, characters (Linux's PATH_MAX)."""
MAX_GPUS_TEXT = 256
"""Longest ``gpus`` value accepted, characters."""


def parse_gpus(text: str) -> tuple[int, GPUSpec]:
    """Parse ``"8xH100"`` into (count, GPU spec); the text is NFKC-normalised first.

    The count must be written in ASCII digits (full-width digits become ASCII under NFKC; digits
    of other scripts, such as Arabic-Indic ``"٨"``, are refused rather than read as numbers).

    Raises:
        PpplanError: a malformed string, a count outside 1..MAX_GPUS or an unknown GPU kind.
    """
    norm = check_text(unicodedata.normalize("NFKC", text or "").strip(), "gpus")
    m = _GPUS_RE.match(norm)
    if not m:
        raise PpplanError("gpus", rule=f"{shorten(text)} must look like COUNTxKIND, e.g. 8xH100")
    digits = m.group(1)
    if not _ASCII_COUNT.fullmatch(digits):
        raise PpplanError("gpus", rule=f"the count {digits!r} must be written in ASCII digits 0-9")
    if len(digits) > 6:  # int() of a very long digit string is slow; any such count is out of range
        raise PpplanError("gpus", rule=f"{len(digits)}-digit count exceeds the {MAX_GPUS} one plan may cover")
    count = int(digits)
    if count < 1:
        raise PpplanError("gpus", rule=f"count must be at least 1, got {count}")
    if count > MAX_GPUS:
        raise PpplanError(
            "gpus", rule=f"{count} GPUs exceed the {MAX_GPUS} one plan may cover (plan a pod and replicate it)"
        )
    return count, get_gpu(m.group(2))


def is_model_path(model: str) -> bool:
    """Whether ``model`` names a config file or folder rather than a preset.

    A path is explicit: it contains ``/``, starts with ``.`` or ``~``, or ends with ``.json``
    (``./my-model``, ``/data/llama/config.json``, ``~/cfg``, ``model.json``). Anything else is a
    name: a bundled preset, compared case-insensitively. A preset's hub id
    (``meta-llama/Llama-3.1-70B``) contains a ``/`` but resolves to the preset first when loaded
    (see :func:`ppplan.profiler.configs.load_model_config`).
    """
    m = model.strip()
    return "/" in m or "\\" in m or m.startswith((".", "~")) or m.lower().endswith(".json")


def _normalize_model(value: str) -> str:
    """A path stripped (its bytes name a file), a name NFKC-normalised and case-folded."""
    stripped = check_text(value.strip(), "model")
    if not stripped:
        raise PpplanError("model", rule="must be a preset name or a path to a config.json, got an empty string")
    return stripped if is_model_path(stripped) else normalize_name(stripped, "model")


#: GPUs one request may plan for; the exact search enumerates every TP × PP × replica split
MAX_GPUS = 4096
MAX_SLO_MS = 86_400_000.0
"""Largest latency SLO accepted, ms (one day: any larger bound is no bound)."""


class PlanRequest(BaseModel):
    """A planning request. Sizes in tokens, times in milliseconds, memory in GiB."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    model: str = Field(
        max_length=MAX_TEXT,
        description="bundled preset name (case-insensitive) or path to a Hugging Face config.json; a path "
        "contains '/', starts with '.' or '~', or ends with '.json'",
    )
    hf_config: dict[str, Any] | None = Field(
        None,
        description="an uploaded Hugging Face config.json to plan instead of a preset or a path; "
        "`model` is then its display name",
    )
    gpus: str = Field(
        max_length=MAX_GPUS_TEXT,
        description="COUNTxKIND, e.g. 8xH100 (stored as COUNTxNAME with the catalog's GPU name)",
    )
    nodes: int | None = Field(
        None, ge=1, le=MAX_GPUS, strict=True, description="nodes the GPUs are spread over (default: as few as fit)"
    )
    weight_dtype: Literal["bf16", "fp16", "fp8", "int8", "int4"] = "bf16"
    kv_dtype: Literal["bf16", "fp16", "fp8"] = "bf16"
    prompt_tokens: int = Field(2048, ge=1, le=10_000_000, strict=True, description="prompt length per request")
    output_tokens: int = Field(512, ge=1, le=10_000_000, strict=True, description="generated tokens per request")
    prompt_tokens_sd: float | None = Field(
        None, ge=0, le=10_000_000, description="standard deviation of the prompt length (default: fixed)"
    )
    output_tokens_sd: float | None = Field(
        None, ge=0, le=10_000_000, description="standard deviation of the output length (default: fixed)"
    )
    prompt_tokens_histogram: Histogram | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="prompt lengths as (tokens, weight) pairs; overrides prompt_tokens and prompt_tokens_sd",
    )
    output_tokens_histogram: Histogram | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="output lengths as (tokens, weight) pairs; overrides output_tokens and output_tokens_sd",
    )
    concurrency: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        strict=True,
        description="pin the sequences in flight across all replicas (default: searched per configuration)",
    )
    request_rate: float | None = Field(
        None, gt=0, le=1e7, description="requests per second to serve (Poisson arrivals); TTFT is predicted at it"
    )
    output_rate: float | None = Field(
        None, gt=0, le=1e10, description="output tokens per second to serve (the request rate × output tokens)"
    )
    context: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        strict=True,
        description="KV tokens to reserve per sequence (default prompt + output)",
    )
    objective: Objective = "throughput"
    max_tpot_ms: float | None = Field(
        None, gt=0, le=MAX_SLO_MS, description="SLO: time per output token, ms (at most a day)"
    )
    max_ttft_ms: float | None = Field(
        None, gt=0, le=MAX_SLO_MS, description="SLO: time to first token, ms (at most a day)"
    )
    tp: int | None = Field(
        None, ge=1, le=MAX_GPUS, strict=True, description="pin the tensor-parallel degree (of attention, with EP)"
    )
    ep: int | None = Field(
        None, ge=1, le=MAX_GPUS, strict=True, description="pin the expert-parallel degree of MoE layers (1: none)"
    )
    expert_imbalance: float | None = Field(
        None,
        ge=1,
        le=64,
        description="busiest EP rank's routed tokens / the mean (default 1.5, from published EPLB measurements)",
    )
    cluster: dict[str, Any] | None = Field(
        None,
        description="a cluster description (nodes with GPU kind, count, interconnect; the network), instead "
        "of gpus' COUNTxKIND; gpus then holds its canonical text",
    )
    pp: int | None = Field(None, ge=1, le=MAX_GPUS, strict=True, description="pin the pipeline-parallel degree")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="share of HBM the engine may use")
    runtime_reserve_gib: float = Field(2.0, ge=0, le=1024, description="CUDA context, NCCL and graph buffers per GPU")
    prefill_chunk_tokens: int = Field(
        8192, ge=1, le=10_000_000, strict=True, description="tokens per prefill chunk (workspace sizing)"
    )
    profile: str | None = Field(
        None, max_length=MAX_TEXT, description="a profile file or stored profile id (default: analytic)"
    )
    engine: Engine | None = Field(
        None,
        description="the serving engine the plan targets: its KV block size and memory model "
        "(default: vllm's); with kernel_db, whose measured kernels to use",
    )
    kernel_db: Literal["aiconfigurator"] | None = Field(
        None, description="compose unit times from a measured kernel database (needs ppplan[kerneldb])"
    )
    solver: Literal["dp", "cpsat"] = Field(
        "dp",
        description="solver of the chosen configuration's cut: dp "
        "(exact) or cpsat (OR-Tools, hinted with the DP cut, gap reported)",
    )

    @field_validator("model")
    @classmethod
    def _check_model(cls, v: str) -> str:
        return _normalize_model(v)

    @field_validator("gpus")
    @classmethod
    def _check_gpus(cls, v: str) -> str:
        if _is_cluster_text(v):
            from ppplan.partitioner.cluster import parse_cluster_gpus  # lazy: cluster.py imports this module

            return parse_cluster_gpus(v).text
        count, gpu = parse_gpus(v)
        return f"{count}x{gpu.name}"

    @field_validator("profile")
    @classmethod
    def _check_profile(cls, v: str | None) -> str | None:
        # a file path or a stored id: stripped, never case-folded (its bytes name a file)
        return None if v is None else check_text(v.strip(), "profile")

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
        if self.hf_config is not None and is_model_path(self.model):
            raise PpplanError(
                "model", value=self.model, rule="with hf_config, model is a display name, not a path or file"
            )
        if self.request_rate is not None and self.output_rate is not None:
            raise PpplanError(
                "output_rate", rule="give request_rate or output_rate, not both (output_rate = request_rate × output)"
            )
        for name in ("prompt_tokens_histogram", "output_tokens_histogram"):
            _check_histogram(name, getattr(self, name))
        count = self.gpu_count
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
        smallest = min((g.gpu for g in self.cluster_spec.groups), key=lambda g: g.hbm_gib)
        usable = self.gpu_memory_utilization * smallest.hbm_gib
        if self.runtime_reserve_gib >= usable:
            raise PpplanError(
                "runtime_reserve_gib",
                rule=f"{self.runtime_reserve_gib:g} GiB leaves no room in the "
                f"{usable:.1f} GiB the engine may use ({self.gpu_memory_utilization:g} × "
                f"{smallest.hbm_gib:.0f} GiB)",
            )
        return self

    @property
    def cluster_spec(self) -> Cluster:
        """The GPUs as groups of nodes: from ``cluster``, or ``gpus`` (with ``nodes``)."""
        from ppplan.partitioner.cluster import (  # lazy: cluster.py imports this module
            Cluster,
            GpuGroup,
            default_interconnect,
            parse_cluster_gpus,
        )  # lazy: cluster.py imports this module
        from ppplan.partitioner.cluster_file import parse_cluster_file  # lazy: cluster_file.py imports this module

        if self.cluster is not None:
            return parse_cluster_file(json.dumps(self.cluster))
        if _is_cluster_text(self.gpus):
            return parse_cluster_gpus(self.gpus, self.nodes)
        count, gpu = parse_gpus(self.gpus)
        gpn = count // self.nodes if self.nodes is not None else min(gpu.gpus_per_node, count)
        nodes = max(1, count // gpn)
        return Cluster(
            groups=(GpuGroup(gpu=gpu, nodes=nodes, gpus_per_node=gpn, interconnect=default_interconnect(gpu)),)
        )

    @property
    def is_mixed(self) -> bool:
        """Whether the GPUs are of more than one kind (or nodes of unequal size)."""
        return (self.cluster is not None or _is_cluster_text(self.gpus)) and not self.cluster_spec.homogeneous

    @property
    def rate(self) -> float | None:
        """Requests per second to serve: request_rate, or output_rate / mean output tokens."""
        if self.request_rate is not None:
            return self.request_rate
        if self.output_rate is not None:
            return self.output_rate / self.mean_output_tokens
        return None

    @property
    def mean_prompt_tokens(self) -> float:
        """Mean prompt length, tokens (the histogram's when given)."""
        return _hist_mean(self.prompt_tokens_histogram) if self.prompt_tokens_histogram else float(self.prompt_tokens)

    @property
    def mean_output_tokens(self) -> float:
        """Mean output length, tokens (the histogram's when given)."""
        return _hist_mean(self.output_tokens_histogram) if self.output_tokens_histogram else float(self.output_tokens)

    @property
    def gpu_count(self) -> int:
        """Number of GPUs in the cluster."""
        if self.cluster is not None or _is_cluster_text(self.gpus):
            return self.cluster_spec.count
        return parse_gpus(self.gpus)[0]

    @property
    def gpu(self) -> GPUSpec:
        """The GPU kind (of the first group of a mixed cluster)."""
        if self.cluster is not None or _is_cluster_text(self.gpus):
            return self.cluster_spec.groups[0].gpu
        return parse_gpus(self.gpus)[1]

    @property
    def gpus_per_node(self) -> int:
        """GPUs of one node (of the first group of a mixed cluster)."""
        if self.cluster is not None or _is_cluster_text(self.gpus):
            return self.cluster_spec.groups[0].gpus_per_node
        count = self.gpu_count
        return count // self.nodes if self.nodes is not None else min(self.gpu.gpus_per_node, count)

    @property
    def kv_context(self) -> int:
        """Longest sequence the engine must admit, tokens (its max-model-len): ``context`` when given,
        else the longest prompt + output of the workload (a histogram's largest, or mean + 3 sd)."""
        if self.context is not None:
            return self.context
        return _longest(self.prompt_tokens, self.prompt_tokens_sd, self.prompt_tokens_histogram) + _longest(
            self.output_tokens, self.output_tokens_sd, self.output_tokens_histogram
        )


def _is_cluster_text(text: str) -> bool:
    """``8xH100+8xA100-80GB`` or ``2x8xH100``: groups or nodes written out (see partitioner.cluster)."""
    return "+" in text or len(re.findall(r"[xX×*]", text.split("-")[0])) > 1


def _hist_mean(h: Histogram) -> float:
    total = sum(w for _, w in h)
    return sum(t * w for t, w in h) / total


def _longest(mean: int, sd: float | None, hist: Histogram | None) -> int:
    """Tokens the longest request of a length distribution needs (a tail bound, see :attr:`kv_context`)."""
    if hist:
        return max(t for t, w in hist if w > 0)
    return mean + math.ceil(3 * sd) if sd else mean


def _check_histogram(name: str, hist: Histogram | None) -> None:
    if hist is None:
        return
    for tokens, weight in hist:
        if not 1 <= tokens <= 10_000_000:
            raise PpplanError(name, value=tokens, rule="every length must be between 1 and 10,000,000 tokens")
        if not weight >= 0 or not math.isfinite(weight):
            raise PpplanError(name, value=weight, rule="every weight must be a finite number ≥ 0")
    if sum(w for _, w in hist) <= 0:
        raise PpplanError(name, rule="the weights must not all be 0")

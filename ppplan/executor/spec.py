"""What one executor run does: the plan, the device, the workload, the timeouts (plain data).

The launching process writes a :class:`RunSpec` as JSON into the run folder; every rank reads it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ppplan.core.errors import PpplanError

__all__ = [
    "CHECK_WORKLOAD",
    "DTYPES",
    "MAX_WORKLOAD",
    "Device",
    "ExecutorError",
    "RankFailedError",
    "RunSpec",
    "Workload",
    "as_device",
    "parse_slow_ranks",
    "resolve_workload",
]

DTYPES = ("float32", "bfloat16", "float16")

#: the largest workload one run may push through the pipeline (the plan's own, or the options'):
#: the executor keeps every sequence's KV cache and outputs in memory and runs to the end
MAX_WORKLOAD = {"prompt_tokens": 131_072, "new_tokens": 32_768, "micro_batches": 1_024, "micro_batch_size": 4_096}


class ExecutorError(PpplanError):
    """A plan or option the executor cannot run; the message names the field, the value and the rule."""


class RankFailedError(RuntimeError):
    """A rank died or timed out; the message says which rank, which stage and why."""


@dataclass(kw_only=True, slots=True, frozen=True)
class Workload:
    """The batch one run pushes through the pipeline."""

    prompt_tokens: int
    """tokens per prompt (all prompts have this length: causal masks need no padding)"""
    new_tokens: int
    """tokens generated per sequence (the first comes from prefill, the rest from decode steps)"""
    micro_batches: int
    """micro-batches in flight (the plan's M)"""
    micro_batch_size: int
    """sequences per micro-batch (the plan's b)"""

    def __post_init__(self) -> None:
        for name, most in MAX_WORKLOAD.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= most:
                raise ExecutorError(name, v, rule=f"must be an integer in 1..{most:,} (a bounded run)")


#: the batch a correctness check runs when a plan made for another device kind runs on CPU ranks:
#: an H100 plan's 64 × 2048-token prompts would only slow the check down, not test the cut better
CHECK_WORKLOAD = {"prompt_tokens": 16, "new_tokens": 8, "micro_batch_size": 2}


def resolve_workload(
    plan: dict[str, Any],
    device: str,
    *,
    prompt_tokens: int | None = None,
    new_tokens: int | None = None,
    micro_batches: int | None = None,
    micro_batch_size: int | None = None,
) -> tuple[Workload, str]:
    """The workload of a run and a sentence saying where it came from.

    The plan's own workload (prompt tokens, output tokens, its M micro-batches of b) unless the plan
    was made for another device kind than ``device`` (a GPU plan checked on CPU ranks), in which case
    :data:`CHECK_WORKLOAD` with the plan's M; explicit options override either.
    """
    gpu = str(plan["cluster"]["gpu"])
    deg, wl = plan["degrees"], plan["workload"]
    same_kind = (gpu == "CPU") == (device == "cpu")
    if same_kind:
        base = {
            "prompt_tokens": int(wl["prompt_tokens"]),
            "new_tokens": int(wl["output_tokens"]),
            "micro_batch_size": int(deg["micro_batch_size"]),
        }
        why = "the plan's workload"
    else:
        base = dict(CHECK_WORKLOAD)
        why = (
            f"a correctness-check workload (the plan is for {gpu}, this run uses {device} ranks; "
            "pass --prompt-tokens/--new-tokens/--micro-batch-size to change it)"
        )
    base["micro_batches"] = int(deg["micro_batches"])
    overrides = {
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "micro_batches": micro_batches,
        "micro_batch_size": micro_batch_size,
    }
    given = {k: v for k, v in overrides.items() if v is not None}
    if given:
        why += " with " + ", ".join(f"{k}={v}" for k, v in given.items()) + " from the options"
    base.update(given)
    return Workload(**base), why


def parse_slow_ranks(items: list[str]) -> dict[int, float]:
    """``["1:3"]`` → ``{1: 3.0}``: ranks whose compute a run stretches (``--slow-rank RANK:FACTOR``).

    Raises:
        ExecutorError: not RANK:FACTOR, a factor outside [1, 1000], a rank given twice.
    """
    out: dict[int, float] = {}
    for item in items:
        rank, _, factor = item.partition(":")
        try:
            r, f = int(rank), float(factor)
        except ValueError:
            raise ExecutorError("slow_rank", item, rule="must be RANK:FACTOR, e.g. 1:3") from None
        if r < 0 or not 1.0 <= f <= 1000.0 or r in out:
            raise ExecutorError("slow_rank", item, rule="needs a rank ≥ 0 given once and a factor in [1, 1000]")
        out[r] = f
    return out


Device = Literal["cpu", "cuda"]
"""Where the executor's ranks compute."""


def as_device(value: str) -> Device:
    """``value`` as a :data:`Device`.

    Raises:
        ExecutorError: ``value`` is neither 'cpu' nor 'cuda'.
    """
    if value == "cpu":
        return "cpu"
    if value == "cuda":
        return "cuda"
    raise ExecutorError("device", rule=f"{value!r} must be 'cpu' or 'cuda'")


@dataclass(kw_only=True, slots=True)
class RunSpec:
    """One run of a plan, as every rank sees it (JSON in the run folder)."""

    plan_path: str
    """the Plan JSON v1 file (a copy in the run folder)"""
    device: Device = "cpu"
    """where ranks compute; 'cuda' uses GPU local_rank % device_count"""
    backend: Literal["gloo", "nccl"] = "gloo"
    """torch.distributed backend: gloo on CPU (and on a GPU shared by several ranks), NCCL otherwise"""
    dtype: str = "float32"
    """parameter and activation dtype: float32, bfloat16 or float16"""
    workload: dict[str, int] = field(default_factory=dict)
    """:class:`Workload` fields"""
    seed: int = 0
    """global seed of random weights and prompts"""
    checkpoint: str | None = None
    """a .safetensors file or folder; None means seeded random weights"""
    out_dir: str = "."
    """rank 0 writes ``result.json`` and ``outputs.pt`` here (atomically)"""
    timeout_s: float = 60.0
    """longest a rank waits on a receive or a collective before it fails (seconds)"""
    warmup: bool = True
    """run a short unmeasured prefill + decode first (allocator, kernels, sockets)"""
    stage_first_rank: list[int] = field(default_factory=list)
    """global rank of each stage's first TP rank (filled by the launcher)"""
    tp: int = 1
    """tensor-parallel ranks per stage"""
    stream: dict[str, Any] | None = None
    """a load run (:class:`ppplan.executor.arrivals.LoadSpec` fields): serve a Poisson request stream
    with continuous batching instead of the fixed micro-batch schedule"""
    slow_ranks: dict[str, float] = field(default_factory=dict)
    """global rank (as text, JSON keys) → factor ≥ 1: that rank's compute is stretched by sleeping
    (factor − 1) × each step's compute time (a slower GPU, for mixed-speed plans)"""
    ep: int = 1
    """expert-parallel ranks per stage: each holds 1/ep of the routed experts (tokens travel all-to-all)"""

    def __post_init__(self) -> None:
        as_device(self.device)
        if self.dtype not in DTYPES:
            raise ExecutorError("dtype", rule=f"{self.dtype!r} must be one of {', '.join(DTYPES)}")
        for r, f in self.slow_ranks.items():
            if not (r.isdigit() and isinstance(f, int | float) and 1.0 <= f <= 1000.0):
                raise ExecutorError("slow_rank", f"{r}:{f}", rule="must be RANK:FACTOR with a factor in [1, 1000]")
        if self.timeout_s <= 0:
            raise ExecutorError("timeout_s", rule=f"must be positive seconds, got {self.timeout_s}")

    def save(self, path: Path) -> None:
        """Write the spec as JSON to ``path`` (atomically)."""
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> RunSpec:
        """Read a spec written by :meth:`save`."""
        return cls(**json.loads(Path(path).read_text()))

    @property
    def load_workload(self) -> Workload:
        """The workload as a :class:`Workload`."""
        return Workload(**self.workload)

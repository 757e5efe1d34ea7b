"""What the charts read from a Plan JSON dict, with fallbacks: every field added after schema minor 0
(``units``, ``candidates``, ``baselines[i].stages``, ``schedule.name``, ``tokens_per_s_per_user``) is read
with ``.get``, so plans stored by older versions draw too, with fewer details."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "Cut",
    "Point",
    "StageMemory",
    "StageTime",
    "Unit",
    "memory_cuts",
    "plan_units",
    "stage_times",
    "stage_units",
    "tradeoff_points",
]

Plan = Mapping[str, Any]


@dataclass(frozen=True)
class StageMemory:
    """Memory per GPU of one stage, GiB."""

    weights: float
    kv: float
    workspace: float
    reserve: float
    limit: float

    @property
    def total(self) -> float:
        """Everything the stage holds, GiB."""
        return self.weights + self.kv + self.workspace + self.reserve

    @property
    def free(self) -> float:
        """Headroom below the limit, GiB (0 when over it)."""
        return max(self.limit - self.total, 0.0)


@dataclass(frozen=True)
class Cut:
    """One stage cut shown in the memory chart: the plan's or an engine's default.

    ``stages`` is None when the plan carries neither the baseline's stage memory nor per-unit memory to
    derive it from; ``source`` says where the numbers came from.
    """

    label: str
    key: str
    partition: tuple[int, ...]
    stages: tuple[StageMemory, ...] | None
    feasible: bool
    reason: str | None
    source: str


@dataclass(frozen=True)
class Unit:
    """One planning unit (embedding, decoder layer, LM head) or, for plans without ``units``, one whole
    stage standing for its units (``span`` units wide)."""

    index: int
    name: str
    kind: str
    stage: int
    decode_ms: float
    prefill_ms: float
    weights_gib: float
    kv_gib: float
    span: int = 1


@dataclass(frozen=True)
class StageTime:
    """Time of one stage per micro-batch in the decode cycle, ms."""

    index: int
    decode_ms: float
    prefill_ms: float
    send_ms: float
    busy_ms: float
    gpu: str


@dataclass(frozen=True)
class Point:
    """One scored configuration of the trade-off chart."""

    tp: int
    pp: int
    replicas: int
    micro_batches: int
    micro_batch_size: int
    gpus: int
    partition: tuple[int, ...]
    throughput: float
    per_gpu: float
    per_user: float
    tpot_ms: float
    ttft_ms: float
    slo_met: bool
    chosen: bool = False
    frontier: bool = False

    @property
    def key(self) -> tuple[Any, ...]:
        """What identifies a configuration: its degrees and cut."""
        return (self.tp, self.pp, self.replicas, self.micro_batches, self.micro_batch_size, self.partition)


def _f(d: Mapping[str, Any] | None, key: str, default: float = 0.0) -> float:
    v = (d or {}).get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else default


def _stage_memory(m: Mapping[str, Any], limit: float) -> StageMemory:
    return StageMemory(
        weights=_f(m, "weights_gib"),
        kv=_f(m, "kv_cache_gib"),
        workspace=_f(m, "workspace_gib"),
        reserve=_f(m, "reserve_gib"),
        limit=_f(m, "limit_gib", limit),
    )


def _limit(plan: Plan) -> float:
    return _f(plan.get("cluster"), "usable_gib", _f(plan.get("cluster"), "hbm_gib", 80.0))


def plan_units(plan: Plan) -> list[Unit] | None:
    """The plan's per-unit costs, or None for plans made before ``units`` existed."""
    raw = plan.get("units")
    if not isinstance(raw, list) or not raw:
        return None
    out = []
    for i, u in enumerate(raw):
        out.append(
            Unit(
                index=int(u.get("index", i)),
                name=str(u.get("name", f"unit {i}")),
                kind=str(u.get("kind", "decoder")),
                stage=int(u.get("stage", 0)),
                decode_ms=_f(u, "decode_ms"),
                prefill_ms=_f(u, "prefill_ms"),
                weights_gib=_f(u, "weights_gib"),
                kv_gib=_f(u, "kv_cache_gib"),
            )
        )
    return out


def stage_units(plan: Plan) -> list[Unit]:
    """Per-unit costs when the plan has them, else one wide entry per stage (its decoder layers' count)."""
    units = plan_units(plan)
    if units is not None:
        return units
    out = []
    for k, s in enumerate(plan.get("stages") or []):
        lo, hi = (s.get("units") or [0, 0])[:2]
        times, mem = s.get("times") or {}, s.get("memory") or {}
        out.append(
            Unit(
                index=int(lo),
                name=f"stage {k}: units {lo}–{hi}",
                kind="stage",
                stage=k,
                decode_ms=_f(times, "decode_ms"),
                prefill_ms=_f(times, "prefill_ms"),
                weights_gib=_f(mem, "weights_gib"),
                kv_gib=_f(mem, "kv_cache_gib"),
                span=max(int(hi) - int(lo) + 1, 1),
            )
        )
    return out


def _derived_stages(plan: Plan, partition: Sequence[int], units: list[Unit]) -> tuple[StageMemory, ...] | None:
    """Stage memory of another cut from the per-unit weights and KV; workspace and reserve are taken from
    the plan's stage at the same position (the head's and the embedding's stages keep their roles)."""
    plan_stages = plan.get("stages") or []
    decoders = [u for u in units if u.kind == "decoder"]
    if len(plan_stages) != len(partition) or sum(partition) != len(decoders):
        return None
    embed = [u for u in units if u.kind == "embed"]
    head = [u for u in units if u.kind == "head"]
    out, at = [], 0
    for k, n in enumerate(partition):
        mine = decoders[at : at + n] + (embed if k == 0 else []) + (head if k == len(partition) - 1 else [])
        at += n
        ref = _stage_memory(plan_stages[k].get("memory") or {}, _limit(plan))
        out.append(
            StageMemory(
                weights=sum(u.weights_gib for u in mine),
                kv=sum(u.kv_gib for u in mine),
                workspace=ref.workspace,
                reserve=ref.reserve,
                limit=ref.limit,
            )
        )
    return tuple(out)


def memory_cuts(plan: Plan) -> list[Cut]:
    """The plan's cut, then each engine's default cut (engines with the same partition merged into one)."""
    limit = _limit(plan)
    mine = tuple(_stage_memory(s.get("memory") or {}, limit) for s in plan.get("stages") or [])
    cuts = [Cut("this plan", "plan", tuple(plan.get("partition") or []), mine, True, None, "plan")]
    units = plan_units(plan)
    merged: dict[tuple[int, ...], list[Mapping[str, Any]]] = {}
    for b in plan.get("baselines") or []:
        merged.setdefault(tuple(b.get("partition") or []), []).append(b)
    for partition, group in merged.items():
        b = group[0]
        engines = [str(x.get("engine", "engine")) for x in group]
        stages: tuple[StageMemory, ...] | None = None
        source = "not in this plan (no per-unit memory)"
        if isinstance(b.get("stages"), list) and b["stages"]:
            stages, source = tuple(_stage_memory(s, limit) for s in b["stages"]), "reported"
        elif units is not None:
            stages = _derived_stages(plan, partition, units)
            source = "derived from per-unit memory" if stages is not None else source
        label = " = ".join(engines) + " default"
        cuts.append(
            Cut(label, "-".join(engines), partition, stages, bool(b.get("feasible", True)), b.get("reason"), source)
        )
    return cuts


def stage_times(plan: Plan) -> list[StageTime]:
    """Each stage's decode, prefill share and send time per micro-batch, ms."""
    out = []
    gpu = str((plan.get("cluster") or {}).get("gpu", ""))
    for k, s in enumerate(plan.get("stages") or []):
        t = s.get("times") or {}
        decode, send = _f(t, "decode_ms"), _f(t, "send_ms")
        busy = _f(t, "busy_ms", decode + send)
        out.append(StageTime(k, decode, max(busy - decode - send, 0.0), send, busy, str(s.get("gpu") or gpu)))
    return out


def _point(d: Mapping[str, Any]) -> Point | None:
    deg = d.get("degrees") or {}
    tpot = _f(d, "tpot_ms")
    if tpot <= 0:
        return None
    return Point(
        tp=int(deg.get("tp", 1)),
        pp=int(deg.get("pp", 1)),
        replicas=int(deg.get("replicas", 1)),
        micro_batches=int(deg.get("micro_batches", 1)),
        micro_batch_size=int(deg.get("micro_batch_size", 1)),
        gpus=int(deg.get("gpus_used", int(deg.get("tp", 1)) * int(deg.get("pp", 1)) * int(deg.get("replicas", 1)))),
        partition=tuple(d.get("partition") or []),
        throughput=_f(d, "throughput_tokens_per_s"),
        per_gpu=_f(d, "throughput_per_gpu"),
        per_user=_f(d, "tokens_per_s_per_user", 1000.0 / tpot),
        tpot_ms=tpot,
        ttft_ms=_f(d, "ttft_ms"),
        slo_met=bool(d.get("slo_met", True)),
    )


def tradeoff_points(plan: Plan) -> list[Point]:
    """Every scored configuration (``candidates``, else the Pareto front and the runner-ups), the chosen
    one last and built from the plan's own metrics, so the highlighted point is the plan exactly.
    ``frontier`` marks the points on the plan's Pareto front."""
    metrics = plan.get("metrics") or {}
    chosen = _point({**metrics, "degrees": plan.get("degrees") or {}, "partition": plan.get("partition") or []})
    pareto = [p for p in map(_point, plan.get("pareto") or []) if p is not None]
    front = {p.key for p in pareto}
    seen: dict[tuple[Any, ...], Point] = {}
    pool = plan.get("candidates") or [*(plan.get("pareto") or []), *(plan.get("runner_ups") or [])]
    for d in pool:
        p = _point(d)
        if p is None or p.key in seen or d.get("chosen") or (chosen is not None and p.key == chosen.key):
            continue
        seen[p.key] = p
    for p in pareto:  # a front point missing from `candidates` still belongs on the chart
        if chosen is None or p.key != chosen.key:
            seen.setdefault(p.key, p)
    out = [replace(p, frontier=p.key in front) for p in seen.values()]
    if chosen is not None:
        out.append(replace(chosen, chosen=True, frontier=chosen.key in front))
    return out

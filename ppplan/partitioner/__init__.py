"""ppplan partitioner: pure solvers and plan types (numpy only; no torch, no I/O).

- :mod:`partitioner.dp` — exact contiguous stage partition (min slowest stage, memory limits,
  KV-headroom tie-break, heterogeneous stages).
- :mod:`partitioner.cpsat` — the same problem as an OR-Tools CP-SAT model (cross-check).
- :mod:`partitioner.costmodel` — seconds and bytes per planning unit on a GPU kind.
- :mod:`partitioner.search` — TP × PP × replicas × micro-batches search → :class:`Plan`.
- :mod:`partitioner.plan`, :mod:`partitioner.request` — Plan JSON v1 and the planning request.
"""

from ppplan.partitioner.dp import PartitionProblem, PartitionResult, solve_partition
from ppplan.partitioner.plan import Plan
from ppplan.partitioner.request import PlanRequest
from ppplan.partitioner.search import InfeasibleError, PlanningError, plan_model

__all__ = [
    "InfeasibleError",
    "PartitionProblem",
    "PartitionResult",
    "Plan",
    "PlanRequest",
    "PlanningError",
    "plan_model",
    "solve_partition",
]

"""ppplan partitioner: pure solvers and plan types (numpy only; no torch, no I/O).

- :mod:`partitioner.problem` — the partition problem, its solution type and the one cut evaluator.
- :mod:`partitioner.dp` — exact contiguous stage partition (min slowest stage, memory limits,
  KV-headroom tie-break, heterogeneous stages).
- :mod:`partitioner.cpsat` — the same problem as an OR-Tools CP-SAT model (cross-check).
- :mod:`partitioner.search` — TP × PP × replicas × micro-batches search → :class:`Plan`, over
  :mod:`partitioner.space` (layouts), :mod:`partitioner.costs` (schedule model),
  :mod:`partitioner.bounds` (branch and bound) and :mod:`partitioner.assembly` (the Plan).
- :mod:`partitioner.plan`, :mod:`partitioner.request` — Plan JSON v1 and the planning request.
"""

from ppplan.partitioner.dp import solve_partition
from ppplan.partitioner.plan import Plan
from ppplan.partitioner.problem import CutEvaluation, PartitionProblem, PartitionSolution, evaluate_cut
from ppplan.partitioner.request import PlanRequest
from ppplan.partitioner.search import InfeasibleError, PlanningError, plan_model

__all__ = [
    "CutEvaluation",
    "InfeasibleError",
    "PartitionProblem",
    "PartitionSolution",
    "Plan",
    "PlanRequest",
    "PlanningError",
    "evaluate_cut",
    "plan_model",
    "solve_partition",
]

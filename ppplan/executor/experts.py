"""Expert parallelism inside a stage: each EP rank holds 1/ep of every MoE layer's routed experts.

The layout is DeepSeek's (SGLang ``--enable-dp-attention --ep-size``): the stage's EP ranks run
attention data-parallel, each on its own share of the micro-batch's sequences (its own KV cache),
and meet in every MoE layer. There each rank routes its tokens with the (replicated) router, sends
every (token, expert) assignment to the rank holding that expert — ``all_to_all_single`` with
uneven splits, which gloo supports — the owners run their experts and send the results back the
same way, and each rank combines its tokens' expert outputs with the router weights.

The expert math is transformers' own (``MixtralExperts``: ``gate_up_proj``/``down_proj`` 3-D
parameters, the module's activation); only where each expert runs changes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ppplan.executor.spec import ExecutorError

__all__ = ["ExpertParallel", "dispatch_counts", "expert_parallelize"]


class ExpertParallel(nn.Module):
    """The experts of one MoE layer on one EP rank: experts ``[rank·E/ep, (rank+1)·E/ep)``."""

    def __init__(self, experts: Any, group: Any, rank: int, ep: int) -> None:
        super().__init__()
        total = int(experts.gate_up_proj.shape[0])
        self.num_experts, self.ep, self.rank, self.group = total, ep, rank, group
        self.per_rank = total // ep
        lo, hi = rank * self.per_rank, (rank + 1) * self.per_rank
        # slices are copied so the other ranks' experts are freed with the original parameters
        self.gate_up_proj = nn.Parameter(experts.gate_up_proj.data[lo:hi].clone(), requires_grad=False)
        self.down_proj = nn.Parameter(experts.down_proj.data[lo:hi].clone(), requires_grad=False)
        self.act_fn: Any = experts.act_fn
        self.first = lo
        self.assignments = 0
        """(token, expert) assignments this rank routed"""
        self.remote = 0
        """of those, sent to another EP rank"""

    def _exchange(self, x: torch.Tensor, send: list[int], recv: list[int]) -> torch.Tensor:
        out = x.new_empty((sum(recv), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), output_split_sizes=recv, input_split_sizes=send, group=self.group)
        return out

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> Any:
        """``hidden_states [T, H]`` of this rank's tokens, their experts and router weights ``[T, k]``
        → the weighted sum of their experts' outputs ``[T, H]`` (dispatch, compute, combine)."""
        k = top_k_index.shape[1]
        token = torch.arange(hidden_states.shape[0], device=hidden_states.device).repeat_interleave(k)
        expert = top_k_index.reshape(-1)
        weight = top_k_weights.reshape(-1)
        owner = torch.div(expert, self.per_rank, rounding_mode="floor")
        order = torch.argsort(owner, stable=True)
        token, expert, weight = token[order], expert[order], weight[order]
        send = torch.bincount(owner, minlength=self.ep).to(torch.int64)
        recv_t = torch.empty_like(send)
        dist.all_to_all_single(recv_t, send, group=self.group)
        s, r = send.tolist(), recv_t.tolist()
        self.assignments += sum(s)
        self.remote += sum(s) - s[self.rank]
        x = self._exchange(hidden_states[token], s, r)
        e = self._exchange(expert, s, r) - self.first
        y = torch.zeros_like(x)
        for j in torch.unique(e).tolist():
            rows = (e == j).nonzero().squeeze(-1)
            gate, up = nn.functional.linear(x[rows], self.gate_up_proj[j]).chunk(2, dim=-1)
            y[rows] = nn.functional.linear(self.act_fn(gate) * up, self.down_proj[j])
        back = self._exchange(y, r, s)
        out = torch.zeros_like(hidden_states)
        out.index_add_(0, token, (back * weight[:, None]).to(out.dtype))
        return out


def expert_parallelize(rt: Any, group: Any, rank: int, ep: int) -> list[str]:
    """Replace the routed experts of the stage's MoE layers with this rank's :class:`ExpertParallel`
    share; returns notes for the report.

    Raises:
        ExecutorError: a stage without fused routed experts, or ``ep`` not dividing their count.
    """
    count, total = 0, 0
    for layer in rt.layers:
        mlp: Any = getattr(layer, "mlp", None)
        experts = getattr(mlp, "experts", None)
        fused = getattr(experts, "gate_up_proj", None)
        if experts is None or not isinstance(fused, torch.Tensor) or fused.dim() != 3:
            continue
        total = int(experts.gate_up_proj.shape[0])
        if total % ep:
            raise ExecutorError("degrees.ep", ep, rule=f"must divide the {total} routed experts of each MoE layer")
        mlp.experts = ExpertParallel(experts, group, rank, ep)
        count += 1
    if count == 0:
        raise ExecutorError(
            "degrees.ep",
            ep,
            rule="the stage has no MoE layer with fused routed experts (transformers' gate_up_proj/down_proj); "
            "expert parallelism needs an MoE model such as tiny-moe",
        )
    return [
        f"expert parallel: {ep} EP ranks per stage, {total // ep} of {total} routed experts each, attention "
        "data-parallel over the EP ranks; tokens dispatched and combined with all_to_all_single (gloo)"
    ]


def dispatch_counts(rt: Any) -> dict[str, int]:
    """(token, expert) assignments the stage's EP layers routed so far, and how many went to another rank."""
    mods = [m for layer in rt.layers for m in layer.modules() if isinstance(m, ExpertParallel)]
    return {"assignments": sum(m.assignments for m in mods), "remote": sum(m.remote for m in mods)}

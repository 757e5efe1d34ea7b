"""Peak transient memory of a CPU forward: a dispatch mode that counts what the ops allocate.

CUDA has the allocator's peak counters; on CPU the forward runs under :class:`AllocTracker`.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["AllocTracker"]


class AllocTracker(TorchDispatchMode):
    """Counts bytes of tensors the ops under it allocate, minus those freed; keeps the peak.

    An op's output whose storage is one of its inputs' (a view or an in-place op) is no allocation;
    a storage stays counted while any tensor seen here still refers to it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        """bytes allocated under this mode and still referenced"""
        self.peak = 0
        """the most ``current`` has been, bytes"""
        self._live: dict[int, list[int]] = {}  # storage ptr -> [tensors alive, bytes]

    def _release(self, ptr: int) -> None:
        entry = self._live.get(ptr)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] <= 0:
            self.current -= entry[1]
            del self._live[ptr]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs: set[int] = set()
        for a in torch.utils._pytree.tree_leaves((args, kwargs or {})):
            if isinstance(a, torch.Tensor):
                inputs.add(a.untyped_storage().data_ptr())
        for t in torch.utils._pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            ptr = st.data_ptr()
            entry = self._live.get(ptr)
            if entry is not None:
                entry[0] += 1
            elif ptr in inputs or st.nbytes() == 0:
                continue
            else:
                self._live[ptr] = [1, st.nbytes()]
                self.current += st.nbytes()
                self.peak = max(self.peak, self.current)
            weakref.finalize(t, self._release, ptr)
        return out

"""The transformers API differences ppplan meets, in one place (releases 4.56 … 5.x).

transformers renamed the keyword that hands a KV cache to a model, a decoder layer and the mask
builders from ``past_key_values`` to ``cache`` (5.2x; the old name warns until 5.40). A module that
only takes ``**kwargs`` silently drops a keyword it does not know, so passing the wrong name runs
without a cache: decode would attend to the new token alone. Every call site asks here instead.

The profiler's cache shims live here too: they build and refill transformers' cache layers, whose
attributes (``keys``, ``values``, ``cumulative_length``, ``is_initialized``) are internals that
change between releases.

transformers itself is imported on first use: the executor's modules import this one at load.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["cache_kwargs", "causal_mask", "in_place_kv_layer", "new_dynamic_cache", "refill_sliding_layer"]


@functools.cache
def _library_default() -> str:
    from transformers.masking_utils import create_causal_mask  # lazy: importing hf_compat must not load transformers

    return "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


@functools.cache
def _keyword_of(func: Callable[..., Any]) -> str:
    try:
        params = inspect.signature(func).parameters  # follows functools.wraps (deprecate_kwarg)
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return _library_default()


def cache_kwargs(target: Any, cache: Any) -> dict[str, Any]:
    """``{keyword: cache}`` for calling ``target`` (a module, or a function such as a mask builder)
    with a KV cache under the name the installed transformers expects."""
    func = type(target).forward if hasattr(target, "forward") and not inspect.isfunction(target) else target
    return {_keyword_of(func): cache}


def new_dynamic_cache(config: Any) -> Any:
    """An empty ``DynamicCache`` whose layers (full or sliding) follow ``config``'s layer types."""
    from transformers import DynamicCache  # lazy: importing hf_compat must not load transformers

    return DynamicCache(config=config)


def causal_mask(config: Any, hidden: torch.Tensor, cache: Any, positions: torch.Tensor, *, sliding: bool) -> Any:
    """The attention mask transformers builds for a forward of ``hidden`` at ``positions`` over
    ``cache`` (a sliding-window mask when ``sliding``)."""
    from transformers.masking_utils import (  # lazy: importing hf_compat must not load transformers
        create_causal_mask,
        create_sliding_window_causal_mask,
    )

    fn = create_sliding_window_causal_mask if sliding else create_causal_mask
    return fn(
        config=config, inputs_embeds=hidden, attention_mask=None, position_ids=positions, **cache_kwargs(fn, cache)
    )


def refill_sliding_layer(layer: Any, keys: torch.Tensor, values: torch.Tensor, cumulative_length: int) -> None:
    """Make sliding-window cache ``layer`` hold ``keys``/``values`` after ``cumulative_length`` tokens."""
    layer.keys, layer.values, layer.cumulative_length = keys, values, cumulative_length
    layer.is_initialized = True
    layer.device = keys.device
    if hasattr(layer, "_sliding_window_tensor"):
        layer._sliding_window_tensor = layer._sliding_window_tensor.to(keys.device)


def in_place_kv_layer(keys: torch.Tensor, values: torch.Tensor, length: int) -> Any:
    """A full-attention cache layer over preallocated ``keys``/``values`` (``[batch, heads, slots,
    head_dim]``) holding ``length`` tokens; its ``set_length(n)`` rewinds it to ``n`` tokens."""
    return _in_place_layer_class()(keys, values, length)


@functools.cache
def _in_place_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer  # lazy: importing hf_compat must not load transformers

    class _InPlaceLayer(DynamicLayer):  # type: ignore[misc,valid-type]
        """A KV-cache layer that writes new tokens into a preallocated buffer, as paged engines do.

        transformers' ``DynamicLayer`` concatenates (copies the whole cache) on every step, which would
        bill decode for a copy no serving engine makes; this layer keeps the cache object's interface
        for full-attention layers and is reset to ``length`` tokens before each timed step.
        """

        is_sliding = False

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
            super().__init__()
            self._k, self._v = keys, values
            self.device = keys.device
            self.is_initialized = True
            self.set_length(length)

        def set_length(self, n: int) -> None:
            self._len = n
            self.keys = self._k[..., :n, :]
            self.values = self._v[..., :n, :]

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            end = self._len + key_states.shape[-2]
            if end > self._k.shape[-2]:
                raise RuntimeError(f"in-place KV layer of {self._k.shape[-2]} slots cannot take {end} tokens")
            self._k[..., self._len : end, :].copy_(key_states)
            self._v[..., self._len : end, :].copy_(value_states)
            self.set_length(end)
            return self.keys, self.values

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self._len + query_length, 0

        def get_seq_length(self) -> int:
            return self._len

        def get_max_length(self) -> int:
            return -1

        def offload(self) -> None:  # pragma: no cover - never offloaded
            pass

        def prefetch(self) -> None:  # pragma: no cover - never offloaded
            pass

    return _InPlaceLayer

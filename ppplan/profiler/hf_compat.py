"""The transformers API differences ppplan meets, in one place (releases 4.56 … 5.x).

transformers renamed the keyword that hands a KV cache to a model, a decoder layer and the mask
builders from ``past_key_values`` to ``cache`` (5.2x; the old name warns until 5.40). A module that
only takes ``**kwargs`` silently drops a keyword it does not know, so passing the wrong name runs
without a cache: decode would attend to the new token alone. Every call site asks here instead.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["cache_kwargs"]


@functools.cache
def _library_default() -> str:
    from transformers.masking_utils import create_causal_mask

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

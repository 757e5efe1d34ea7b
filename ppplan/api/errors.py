"""One wording for user errors across the CLI (exit 2) and the API (HTTP 422)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from ppplan.api.store.conflict import Conflict
from ppplan.core.errors import PpplanError, shorten

__all__ = ["USER_ERRORS", "describe_error", "format_errors", "format_validation_error"]


_WHERE = frozenset({"body", "query", "path", "header", "cookie"})  # FastAPI's location prefixes, not fields


def format_validation_error(exc: ValidationError) -> str:
    """'field: rule (got value)' for each error of a pydantic validation, joined by '; '."""
    return format_errors(exc.errors())


def format_errors(errors: Iterable[Mapping[str, Any]]) -> str:
    """'field: rule (got value)' for each pydantic error dict, joined by '; '."""
    parts = []
    for err in errors:
        path = list(err["loc"])
        loc = ".".join(str(x) for x in (path[1:] if path and path[0] in _WHERE else path))
        msg = err["msg"].removeprefix("Value error, ")
        if not loc or msg.startswith(f"{loc}:"):
            parts.append(msg)  # model-level rules already start with the fields they name
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) or got is None else f" (got {_shown(got)})"
            parts.append(f"{loc}: {msg}{shown}")
    return "; ".join(parts)


def _shown(value: Any) -> str:
    """``repr`` cut short (a 10 MB string is not repeated in the message), even for huge integers."""
    try:
        return shorten(value)
    except ValueError:  # repr of an integer above Python's 4,300-digit conversion limit
        return f"an integer of {value.bit_length()} bits"


def describe_error(exc: BaseException) -> str:
    """The one-line message of a user error."""
    if isinstance(exc, ValidationError):
        return format_validation_error(exc)
    return str(exc)


USER_ERRORS: tuple[type[Exception], ...] = (ValidationError, PpplanError, Conflict)
"""What the CLI reports in one line with exit status 2 (the API: 422, or 409 for a Conflict)."""

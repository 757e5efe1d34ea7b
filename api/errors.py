"""One wording for user errors across the CLI (exit 2) and the API (HTTP 422)."""

from __future__ import annotations

from pydantic import ValidationError

__all__ = ["USER_ERRORS", "describe_error", "format_validation_error"]


def format_validation_error(exc: ValidationError) -> str:
    """'field: rule (got value)' for each error of a pydantic validation, joined by '; '."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"] if x != "body")
        msg = err["msg"].removeprefix("Value error, ")
        if not loc or msg.startswith(f"{loc}:"):
            parts.append(msg)  # model-level rules already start with the fields they name
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
            parts.append(f"{loc}: {msg}{shown}")
    return "; ".join(parts)


def describe_error(exc: BaseException) -> str:
    """The one-line message of a user error."""
    if isinstance(exc, ValidationError):
        return format_validation_error(exc)
    return str(exc)


def _user_errors() -> tuple[type[BaseException], ...]:
    from partitioner.search import PlanningError
    from profiler.configs import ModelConfigError
    from profiler.gpus import UnknownGPUError
    from profiler.profile import ProfileError

    errors: tuple[type[BaseException], ...] = (ValidationError, PlanningError, ModelConfigError, UnknownGPUError,
                                               ProfileError, ValueError)
    try:
        from api.store.repo import Conflict  # the store's contradicting-write error (HTTP 409)
    except ImportError:
        return errors
    return (*errors, Conflict)


USER_ERRORS = _user_errors()

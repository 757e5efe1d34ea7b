"""The one error base of user errors: which input (``field``), what it was (``value``), which rule.

The CLI maps every :class:`PpplanError` to one line on stderr and exit status 2, the HTTP API to
422 with the JSON error body, both without parsing the message. Anything else that escapes is a
bug: HTTP 500 with a request id, a traceback in the CLI only with ``--debug``.
"""

from __future__ import annotations

import re
from typing import Any, Final

__all__ = ["NOT_GIVEN", "PpplanError", "shorten"]


class _NotGiven:
    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __reduce__(self) -> str:  # unpickles as the one module-level sentinel
        return "NOT_GIVEN"


NOT_GIVEN: Final = _NotGiven()
"""``value`` of an error that concerns a whole input rather than one value (a missing file's
contents, a combination of options)."""

_MAX_SHOWN = 200  # characters of an echoed value: a 100 MB body is not echoed back whole


def shorten(value: object, limit: int = _MAX_SHOWN) -> str:
    """``repr(value)`` cut to ``limit`` characters with an ellipsis (for echoing user input)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class PpplanError(ValueError):
    """A user error: input ``field`` has ``value``, which breaks ``rule``.

    A ``ValueError`` so that pydantic validators turn it into a field error; catch it as
    ``PpplanError``, never as ``ValueError`` (a bare ``ValueError`` is a bug).

    Args:
        field: the option, JSON key or file the user gave (``"gpus"``, ``"profile"``, ``"costs.time"``).
        value: what was given; ``NOT_GIVEN`` when no single value is at fault.
        rule: what the value must satisfy, or what went wrong, in words the user can act on.
        **details: machine-readable extras (``needed_bytes``, ``available_bytes`` …).
    """

    def __init__(self, field: str, value: Any = NOT_GIVEN, rule: str = "", **details: Any) -> None:
        self.field = field
        self.value = value
        self.rule = rule
        self.details = details
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """``field: rule (got value)``; the value is left out when the rule already shows it."""
        if self.value is NOT_GIVEN:
            return f"{self.field}: {self.rule}"
        shown = shorten(self.value)
        if _mentions(self.rule, shown) or _mentions(self.rule, str(self.value)):
            return f"{self.field}: {self.rule}"
        return f"{self.field}: {self.rule} (got {shown})"

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes (job pool, executor ranks)
        return (_rebuild, (type(self), self.field, self.value, self.rule, self.details))


def _mentions(text: str, token: str) -> bool:
    """``token`` occurs in ``text`` on its own, not as part of a longer word or number."""
    if not token or len(token) > _MAX_SHOWN:
        return False
    return re.search(rf"(?<![\w.]){re.escape(token)}(?![\w])", text) is not None


def _rebuild(cls: type[PpplanError], field: str, value: Any, rule: str, details: dict[str, Any]) -> PpplanError:
    err = cls.__new__(cls)
    PpplanError.__init__(err, field, value, rule, **details)
    return err

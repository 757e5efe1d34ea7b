"""Text a user gives (names, ids, filters): refused when it holds control characters, normalised
before it is compared or hashed.

PostgreSQL cannot store a NUL byte in a text column or a JSON document, and an unpaired UTF-16
surrogate (JSON ``"\\ud800"``) cannot be encoded as UTF-8 at all, so both are refused where the
text enters rather than failing deep in the store or in the error answer.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from ppplan.core.errors import PpplanError

__all__ = ["TEXT_RULE", "bad_char", "check_strings", "check_text", "normalize_name"]

TEXT_RULE = "must not contain control characters (NUL, tab, newline …) or unpaired surrogates"
"""The rule every checked text follows, as error messages state it."""

_BAD_CATEGORIES = frozenset({"Cc", "Cs"})  # C0/C1 controls and DEL; lone surrogates


def bad_char(text: str) -> int | None:
    """Index of the first control character or unpaired surrogate in ``text``, or None."""
    if text.isprintable():  # the common case, in C: every Cc and Cs character is non-printable
        return None
    for i, ch in enumerate(text):
        if unicodedata.category(ch) in _BAD_CATEGORIES:
            return i
    return None


def check_text(text: str, field: str) -> str:
    """``text`` unchanged when it holds no control character or unpaired surrogate.

    Raises:
        PpplanError: naming ``field``, the offending character and its position.
    """
    i = bad_char(text)
    if i is not None:
        raise PpplanError(field, text, rule=f"{TEXT_RULE}; found U+{ord(text[i]):04X} at position {i}")
    return text


def normalize_name(text: str, field: str) -> str:
    """A name as it is compared and hashed: NFKC, surrounding white space stripped, case-folded.

    ``"LLAMA-3.1-8B"``, ``" llama-3.1-8b "`` and ``"ｌｌａｍａ-3.1-8b"`` (full-width) all give
    ``"llama-3.1-8b"``.

    Raises:
        PpplanError: what is left after stripping holds a control character (NFKC keeps them).
    """
    return check_text(unicodedata.normalize("NFKC", text).strip(), field).casefold()


def check_strings(data: Any, field: str) -> None:
    """Every string and key inside the parsed JSON ``data`` passes :func:`check_text`.

    Raises:
        PpplanError: naming the path of the first offending string from ``field`` (with ``field``
            ``""``: ``units.3.signature``).
    """
    stack: list[tuple[Any, str]] = [(data, field)]
    while stack:  # iterative: a deeply nested document cannot exhaust the recursion limit
        item, at = stack.pop()
        if isinstance(item, str):
            check_text(item, at or "request")
        elif isinstance(item, dict):
            for k, v in item.items():
                stack.append((k, at))
                stack.append((v, f"{at}.{k}" if at else str(k)))
        elif isinstance(item, list):
            stack.extend((v, f"{at}.{i}" if at else str(i)) for i, v in enumerate(item))

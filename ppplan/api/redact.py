"""The one redaction of database passwords, for every message, log line and start line that shows a URL.

Works on any text, not only on a URL SQLAlchemy can parse: the "is not a SQLAlchemy URL" error must hide
the password of exactly the URLs that do not parse, and driver errors may quote a URL inside a sentence.
"""

from __future__ import annotations

import re

__all__ = ["HIDDEN", "redact"]

HIDDEN = "***"
"""What a password is replaced with."""

# scheme://user:PASSWORD@ — the password runs to the last "@" before whitespace, so a password that holds
# "@", ":" or "/" (unescaped, which SQLAlchemy tolerates) is hidden whole: hiding too much beats too little
_USERINFO = re.compile(r"(?P<pre>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*:)(?P<password>[^\s]*)@")
# a password passed as a query parameter (libpq's ?password=, sslpassword=)
_QUERY = re.compile(r"(?P<pre>[?&](?:ssl)?(?:password|passwd|pwd)=)(?P<password>[^&\s'\"]*)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***`` (user, host and database kept).

    ``postgresql+psycopg://ppplan:s3cret@db:5432/ppplan`` becomes ``postgresql+psycopg://ppplan:***@db:5432/ppplan``;
    text without a password comes back unchanged.
    """
    text = _USERINFO.sub(lambda m: f"{m['pre']}{HIDDEN}@", text)
    return _QUERY.sub(lambda m: f"{m['pre']}{HIDDEN}", text)

"""Who may talk to the service: the bearer token, the Host names it answers to, and what ``ppplan serve``
allows before it listens. Plain rules (standard library only), shared by :mod:`ppplan.api.settings`, the
``serve`` command and the ASGI guard in :mod:`ppplan.api.security_middleware`.

* A token (``PPPLAN_API_TOKEN`` or ``ppplan serve --token-file``) makes every request outside the open
  paths (liveness, readiness, docs) carry ``Authorization: Bearer <token>``.
* Host names (``--allowed-hosts`` / ``PPPLAN_ALLOWED_HOSTS``, default the loopback names) defeat DNS
  rebinding: a page on ``evil.example`` that rebinds its name to 127.0.0.1 still sends ``Host: evil.example``.
* ``serve`` listens on a non-loopback address only with a token, or when told ``--insecure-no-auth``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ppplan.core.errors import PpplanError
from ppplan.profiler.files import read_input_text

__all__ = [
    "ALLOWED_HOSTS_ENV",
    "LOOPBACK_HOSTS",
    "TOKEN_ENV",
    "ServeSecurity",
    "app_allowed_hosts",
    "check_token",
    "default_allowed_hosts",
    "host_allowed",
    "is_loopback",
    "is_wildcard",
    "parse_allowed_hosts",
    "parse_host",
    "serve_security",
]

TOKEN_ENV = "PPPLAN_API_TOKEN"
ALLOWED_HOSTS_ENV = "PPPLAN_ALLOWED_HOSTS"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
"""The names a service on loopback is reached by; the default allowed hosts."""
MAX_TOKEN_FILE_BYTES = 64 * 1024
"""A token file larger than this is not a token file."""

_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what an HTTP header carries unchanged
_HOST = re.compile(
    r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_.\-]+|[0-9a-f:]*:[0-9a-f:.]*))(?::(?P<port>[0-9]{1,5}))?"
)
_WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})


def check_token(token: str, field: str) -> str:
    """``token`` without surrounding whitespace, checked; never echoed in an error.

    Raises:
        PpplanError: empty, or not visible ASCII (an ``Authorization`` header could not carry it).
    """
    value = token.strip()
    if not value:
        raise PpplanError(field, rule="the API token is empty; set a non-empty token or leave it unset")
    if not _TOKEN.fullmatch(value):
        raise PpplanError(
            field, rule="the API token must be visible ASCII without spaces (what `Authorization: Bearer` carries)"
        )
    return value


def parse_host(value: str) -> str | None:
    """The host name of a ``Host`` header or allowed-hosts entry, lower case, without port, brackets or a
    trailing dot (``[::1]:8000`` -> ``::1``, ``LocalHost.`` -> ``localhost``); None when it is not one."""
    m = _HOST.fullmatch(value.strip().lower())
    if m is None:
        return None
    # the unbracketed IPv6 form is for allowed-hosts entries and --host; it takes no port
    name = (m["v6"] or m["name"] or "").rstrip(".")
    return name or None


def parse_allowed_hosts(entries: Iterable[str], field: str = "allowed_hosts") -> tuple[str, ...]:
    """Allowed-host entries normalised (see :func:`parse_host`); ``*`` allows any host and ``*.example.com``
    any subdomain of example.com. Blank entries are skipped.

    Raises:
        PpplanError: an entry is not a host name, or no entry is left.
    """
    hosts: list[str] = []
    for raw in entries:
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*" or (entry.startswith("*.") and parse_host(entry[2:]) is not None):
            hosts.append(entry)
            continue
        name = parse_host(entry)
        if name is None:
            raise PpplanError(field, raw, rule=f"{raw!r} is not a host name, an IP address, '*' or '*.domain'")
        hosts.append(name)
    if not hosts:
        raise PpplanError(field, rule="names no host; give at least one (or '*' to accept any Host header)")
    return tuple(dict.fromkeys(hosts))


def host_allowed(name: str, allowed: Iterable[str]) -> bool:
    """Whether the host name ``name`` (as :func:`parse_host` returns it) matches an ``allowed`` entry."""
    for entry in allowed:
        if entry == "*" or entry == name or (entry.startswith("*.") and name.endswith(entry[1:])):
            return True
    return False


def is_wildcard(host: str) -> bool:
    """Whether ``host`` (a ``--host`` value) means every interface."""
    return host.strip().lower() in _WILDCARD_BINDS


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a ``--host`` value) is a loopback address: 127.0.0.0/8, ::1 or ``localhost``."""
    name = host.strip().lower().removeprefix("[").removesuffix("]")
    if name == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def default_allowed_hosts(bind_host: str | None) -> tuple[str, ...]:
    """The loopback names, plus ``bind_host`` (the address ``serve`` listens on) unless it is a wildcard."""
    hosts = list(LOOPBACK_HOSTS)
    if bind_host is not None and not is_wildcard(bind_host):
        name = parse_host(bind_host)
        if name is not None and name not in hosts:
            hosts.append(name)
    return tuple(hosts)


def app_allowed_hosts(configured: tuple[str, ...] | None) -> tuple[str, ...]:
    """The hosts an app answers: the configured list, else the loopback names and the TestClient's name."""
    return configured if configured is not None else LOOPBACK_HOSTS


@dataclass(frozen=True, slots=True)
class ServeSecurity:
    """What ``ppplan serve`` passes its workers, decided before anything listens."""

    token: str | None
    """the bearer token, or None: no authentication"""
    allowed_hosts: tuple[str, ...]
    """the Host names the workers answer"""
    warning: str | None
    """one line to print before serving (listening beyond loopback with no token)"""

    @contextmanager
    def environment(self) -> Iterator[None]:
        """This process's environment with the token and the host list in it, restored on exit: the uvicorn
        workers import the app factory by name and build their settings from the environment."""
        values = {ALLOWED_HOSTS_ENV: ",".join(self.allowed_hosts)}
        if self.token is not None:
            values[TOKEN_ENV] = self.token
        saved = {key: os.environ.get(key) for key in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for key, old in saved.items():
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old


def serve_security(
    host: str,
    *,
    env_token: str | None,
    env_allowed_hosts: tuple[str, ...] | None,
    token_file: Path | None,
    allowed_hosts: str | None,
    insecure_no_auth: bool,
) -> ServeSecurity:
    """Decide the token and host names ``serve`` runs with, or refuse.

    Args:
        host: ``--host``, the address to listen on.
        env_token: the checked ``PPPLAN_API_TOKEN``, if set.
        env_allowed_hosts: the checked ``PPPLAN_ALLOWED_HOSTS``, if set.
        token_file: ``--token-file``: a file holding the token (wins over the environment).
        allowed_hosts: ``--allowed-hosts``, comma-separated (wins over the environment; default the
            loopback names and ``host`` unless it is a wildcard).
        insecure_no_auth: ``--insecure-no-auth``: serve a non-loopback address without a token.

    Raises:
        PpplanError: the token file is unreadable or empty, a host entry is malformed, or ``host`` is not
            loopback while no token is set and ``insecure_no_auth`` is not given.
    """
    token = env_token
    if token_file is not None:
        text = read_input_text(token_file, "token_file", limit=MAX_TOKEN_FILE_BYTES)
        if not text.strip():
            raise PpplanError("token_file", str(token_file), rule=f"{str(token_file)!r} is empty; put the token in it")
        token = check_token(text, "token_file")
    if allowed_hosts is not None:
        hosts = parse_allowed_hosts(allowed_hosts.split(","), "allowed_hosts")
    else:
        hosts = env_allowed_hosts or default_allowed_hosts(host)
    warning = None
    if token is None and not is_loopback(host):
        if not insecure_no_auth:
            raise PpplanError(
                "host",
                host,
                rule=f"{host} is not a loopback address and no API token is set, so anyone who can reach it could "
                f"create, change and delete plans; set {TOKEN_ENV} or --token-file FILE, or pass --insecure-no-auth",
            )
        warning = f"serving {host} with no token (--insecure-no-auth): anyone who can reach it can change the store"
    return ServeSecurity(token=token, allowed_hosts=hosts, warning=warning)

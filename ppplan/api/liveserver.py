"""The service in a subprocess on loopback, for the live tests and the latency benchmark."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO

import httpx

__all__ = ["HOST", "free_port", "live_server", "spawn_server", "wait_ready"]

HOST = "127.0.0.1"  # loopback only, never another address


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def spawn_server(
    database_url: str, port: int, *, log: IO[str] | None = None, extra_args: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """Start ``uvicorn ppplan.api.app:create_app`` on 127.0.0.1:``port`` over ``database_url`` (not waited
    for: see :func:`wait_ready`)."""
    env = {**os.environ, "PPPLAN_DATABASE_URL": database_url}
    cmd = [sys.executable, "-m", "uvicorn", "ppplan.api.app:create_app", "--factory", "--host", HOST]
    cmd += ["--port", str(port), "--log-level", "warning", *extra_args]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT if log is not None else None)


def wait_ready(proc: subprocess.Popen[bytes], base: str, timeout_s: float = 60.0) -> None:
    """Wait until the server at ``base`` answers ``/healthz``.

    Raises:
        RuntimeError: the process exited, or ``timeout_s`` seconds passed.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server on {base} did not start (exit status {proc.poll()})")
        time.sleep(0.1)


@contextmanager
def live_server(
    database_url: str, *, log: IO[str] | None = None, extra_args: Sequence[str] = (), start_timeout_s: float = 60.0
) -> Iterator[str]:
    """Run the service on 127.0.0.1 over ``database_url``; yield its base URL; stop it afterwards.

    Raises:
        RuntimeError: the server exited or did not answer /healthz within ``start_timeout_s`` seconds.
    """
    port = free_port()
    proc = spawn_server(database_url, port, log=log, extra_args=extra_args)
    base = f"http://{HOST}:{port}"
    try:
        wait_ready(proc, base, start_timeout_s)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

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

__all__ = ["HOST", "free_port", "live_server"]

HOST = "127.0.0.1"  # loopback only, never another address


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextmanager
def live_server(
    database_url: str, *, log: IO[str] | None = None, extra_args: Sequence[str] = (), start_timeout_s: float = 60.0
) -> Iterator[str]:
    """Run ``uvicorn api.app:create_app`` on 127.0.0.1 over ``database_url``; yield its base URL.

    Raises:
        RuntimeError: the server exited or did not answer /healthz within ``start_timeout_s`` seconds.
    """
    port = free_port()
    env = {**os.environ, "PPPLAN_DATABASE_URL": database_url}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "ppplan.api.app:create_app",
            "--factory",
            "--host",
            HOST,
            "--port",
            str(port),
            "--log-level",
            "warning",
            *extra_args,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT if log is not None else None,
    )
    base = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server on {base} did not start (exit status {proc.poll()})")
            time.sleep(0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

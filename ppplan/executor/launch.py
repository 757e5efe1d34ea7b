"""Start the ranks of a run through torch's elastic launcher (``torchrun`` semantics).

One host: ``nproc_per_node`` = all ranks, a static rendezvous on a free 127.0.0.1 port. Several
hosts: one :func:`launch` per host with the same ``rdzv_endpoint`` (host:port of node 0) and its
``node_rank``; global rank = node_rank × ranks per node + local rank, so node 0 holds rank 0 and
receives the results. ``max_restarts`` is 0: inference is not elastic, a failed rank fails the run.
"""

from __future__ import annotations

import logging
import math
import re
import signal
import socket
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from ppplan.executor.spec import ExecutorError, RankFailedError, RunSpec

__all__ = ["LaunchOptions", "free_port", "launch"]

#: seconds the rendezvous waits for every node to join
RDZV_TIMEOUT_S = 120


@dataclass(kw_only=True, slots=True, frozen=True)
class LaunchOptions:
    """Where the ranks of a run start."""

    nnodes: int = 1
    """hosts taking part (each runs the launcher once)"""
    node_rank: int = 0
    """this host's index, 0..nnodes-1; node 0 hosts the rendezvous store and rank 0"""
    rdzv_endpoint: str | None = None
    """host:port of node 0's rendezvous store; default a free port on 127.0.0.1 (one host only)"""
    run_id: str | None = None
    """a name shared by the hosts of one run (default random; must be given for several hosts)"""

    def __post_init__(self) -> None:
        if self.nnodes < 1:
            raise ExecutorError("nnodes", rule=f"must be at least 1, got {self.nnodes}")
        if not 0 <= self.node_rank < self.nnodes:
            raise ExecutorError(
                "node_rank", rule=f"{self.node_rank} must be in 0..{self.nnodes - 1} for {self.nnodes} node(s)"
            )
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ExecutorError("rdzv_endpoint", rule="several nodes need node 0's HOST:PORT, e.g. 127.0.0.1:29500")
        if self.rdzv_endpoint and not re.fullmatch(r"[^:\s]+:\d{1,5}", self.rdzv_endpoint):
            raise ExecutorError("rdzv_endpoint", rule=f"{self.rdzv_endpoint!r} must look like HOST:PORT")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(spec: RunSpec, spec_path: Path, world_size: int, opts: LaunchOptions, log_dir: Path) -> None:
    """Run ``python -m executor.worker spec_path`` on this host's share of ``world_size`` ranks.

    Raises:
        ExecutorError: ranks that do not split evenly over the nodes.
        RankFailedError: a rank failed or timed out; the message names it and quotes its error.
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std  # lazy: the CLI imports this module
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError  # lazy: as above
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch  # lazy: as above

    if world_size % opts.nnodes:
        raise ExecutorError("nnodes", rule=f"{world_size} ranks do not split evenly over {opts.nnodes} nodes")
    nproc = world_size // opts.nnodes
    endpoint = opts.rdzv_endpoint or f"127.0.0.1:{free_port()}"
    # the failure is reported once, by us, with the rank's own error line
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    logging.getLogger("torch.distributed.launcher").setLevel(logging.CRITICAL)
    cfg = LaunchConfig(
        min_nodes=opts.nnodes,
        max_nodes=opts.nnodes,
        nproc_per_node=nproc,
        run_id=opts.run_id or f"ppplan-{uuid.uuid4().hex[:8]}",
        rdzv_backend="static",
        rdzv_endpoint=endpoint,
        rdzv_configs={"rank": opts.node_rank, "timeout": RDZV_TIMEOUT_S},
        max_restarts=0,
        monitor_interval=0.2,
        start_method="spawn",
        logs_specs=DefaultLogsSpecs(log_dir=str(log_dir), redirects=Std.ALL),
    )
    try:
        elastic_launch(cfg, sys.executable)("-u", "-m", "ppplan.executor.worker", str(spec_path))
    except ChildFailedError as exc:
        raise RankFailedError(_describe_failure(exc, nproc, opts.node_rank, spec, log_dir)) from None


def _exit_text(code: object) -> str:
    """``exit status 3``, or ``killed by SIGKILL`` for a negative (signal) exit code."""
    if isinstance(code, int) and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _cause_rank(code: object, detail: str) -> int:
    """How likely a failed rank is the root cause, 0 (most) to 2: a rank that failed on its own (an
    error, an exit status, a signal such as SIGKILL from the OOM killer); a rank that only waited on
    a failed peer; a rank SIGTERMed by the launcher, which stops the survivors once one rank fails."""
    if code == -signal.SIGTERM:
        return 2
    return 1 if "died or hangs" in detail else 0


def _describe_failure(exc: object, nproc: int, node_rank: int, spec: RunSpec, log_dir: Path) -> str:
    """One message for a failed run: the root cause first (see :func:`_cause_rank`; then the
    earliest failure, then the lowest rank), each rank with its stage and its own error line."""
    failures = getattr(exc, "failures", {}) or {}
    ranked: list[tuple[int, float, int, str]] = []
    tp = max(1, spec.tp)
    for grank, f in failures.items():
        code = getattr(f, "exitcode", None)
        stamp = getattr(f, "timestamp", None)
        when = float(stamp) if isinstance(stamp, int | float) and math.isfinite(stamp) and stamp > 0 else math.inf
        detail = _error_line(log_dir, grank - node_rank * nproc) or _exit_text(code)
        line = f"rank {grank} (stage {grank // tp}) failed: {detail}"
        ranked.append((_cause_rank(code, detail), when, grank, line))
    lines = [r[3] for r in sorted(ranked)]
    if not lines:
        lines.append(next(iter(str(exc).strip().splitlines()), "a rank failed"))
    return "; ".join(lines) + f" (rank logs in {log_dir})"


def _error_line(log_dir: Path, local_rank: int) -> str | None:
    """The last 'error: …' or exception line a local rank wrote to stderr."""
    files = sorted(log_dir.glob(f"**/attempt_0/{local_rank}/stderr.log"))
    for f in files:
        text = f.read_text(errors="replace").strip().splitlines()
        for line in reversed(text):
            if line.startswith("error: ") or "test hook" in line:
                return line.removeprefix("error: ")
        for line in reversed(text):
            if re.match(r"^\w+(\.\w+)*(Error|Exception)\b", line):
                return line
    return None

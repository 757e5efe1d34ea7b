"""The executor's door to the plan store (issue 4's public functions; no SQL here).

Plans are read with :func:`api.store.repo.get_plan`, measurements written with
:func:`api.store.repo.add_measurements` in one transaction, after the run completed: a failed
run stores nothing.
"""

from __future__ import annotations

import uuid
from typing import Any

__all__ = ["load_stored_plan", "store_measurements", "store_rows", "stored_measurements"]


def load_stored_plan(plan_id: str) -> dict[str, Any] | None:
    """The Plan JSON of stored plan ``plan_id``, or None (unknown id or no store installed)."""
    try:
        from api.store import repo
        from api.store.engine import session_scope
        from api.store_lookup import database_url
    except ImportError:
        return None
    with session_scope(database_url()) as session:
        row = repo.get_plan(session, plan_id)
        return dict(row.body) if row is not None else None


def store_rows(report: dict[str, Any], run_id: str) -> list[dict[str, Any]]:
    """One MeasurementCreate row per stage and phase, for one representative micro-batch step.

    ``compute_s`` is the median step (prefill: one micro-batch of ``micro_batch_size`` prompts;
    decode: one token for each sequence of a micro-batch), ``tokens`` the tokens of that step,
    ``wait_s`` and ``bytes_sent`` the phase's totals divided by its steps, ``peak_bytes`` the
    phase's peak (see :class:`executor.worker.PhaseStats`).
    """
    wl = report["workload"]
    b, P = wl["micro_batch_size"], wl["prompt_tokens"]
    rows = []
    for st in report["stages"]:
        for phase in ("prefill", "decode"):
            ph = st["measured"][phase]
            steps = max(1, ph["steps"])
            rows.append({"stage": st["index"], "phase": phase, "compute_s": ph["median_step_s"],
                         "wait_s": ph["wait_s"] / steps, "bytes_sent": int(ph["bytes_sent"] / steps),
                         "peak_bytes": int(ph["peak_bytes"]), "tokens": b * P if phase == "prefill" else b,
                         "micro_batch_size": b, "run_id": run_id})
    return rows


def store_measurements(plan_id: str, report: dict[str, Any]) -> tuple[int, str]:
    """Store ``report``'s rows for ``plan_id``; returns (rows stored, run id).

    Raises:
        ExecutorError: no store installed, or the plan is not stored.
    """
    from executor.spec import ExecutorError

    try:
        from api.store import repo
        from api.store.engine import session_scope
        from api.store_lookup import database_url
    except ImportError as exc:
        raise ExecutorError(f"store: the plan store is not installed ({exc.name} is missing)") from None
    run_id = f"run-{uuid.uuid4().hex[:12]}"
    with session_scope(database_url()) as session:
        n = repo.add_measurements(session, plan_id, store_rows(report, run_id))
    if n is None:
        raise ExecutorError(f"plan: {plan_id!r} is not a stored plan id; measurements are stored for stored plans")
    return n, run_id


def stored_measurements(plan_id: str, run_id: str | None = None) -> list[dict[str, Any]] | None:
    """The stored rows of ``plan_id`` as dicts (None for an unknown plan)."""
    from api.store import repo
    from api.store.engine import session_scope
    from api.store_lookup import database_url

    cols = ("stage", "phase", "compute_s", "wait_s", "bytes_sent", "peak_bytes", "tokens", "micro_batch_size",
            "run_id")
    with session_scope(database_url()) as session:
        rows = repo.get_measurements(session, plan_id, run_id)
        if rows is None:
            return None
        return [{c: getattr(r, c) for c in cols} for r in rows]

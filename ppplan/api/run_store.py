"""The executor's door to the plan store: stored plans in, measurements and calibrations out.

Plans are read with :func:`ppplan.api.store.repo.get_plan`, measurements written with
:func:`ppplan.api.store.repo.add_measurements` in one transaction, after the run completed: a
failed run stores nothing.
"""

from __future__ import annotations

import uuid
from typing import Any

from ppplan.api.store import repo
from ppplan.api.store.engine import session_scope
from ppplan.api.store_lookup import database_url
from ppplan.executor.calibration import calibrate_rows
from ppplan.executor.load_report import load_rows
from ppplan.executor.report import store_rows
from ppplan.executor.spec import ExecutorError

__all__ = [
    "STAGE_PHASES",
    "calibrate_from_measurements",
    "load_stored_plan",
    "store_measurements",
    "stored_measurements",
]

STAGE_PHASES = ("prefill", "decode")
"""phases of stage step rows (plain runs); load runs store ``ttft`` and ``tpot`` rows"""


def load_stored_plan(plan_id: str) -> dict[str, Any] | None:
    """The Plan JSON of stored plan ``plan_id``, or None for an unknown id."""
    with session_scope(database_url()) as session:
        row = repo.get_plan(session, plan_id)
        return dict(row.body) if row is not None else None


def store_measurements(plan_id: str, report: dict[str, Any]) -> tuple[int, str]:
    """Store ``report``'s rows for ``plan_id``; returns (rows stored, run id). A plain run stores
    stage rows (phases ``prefill``/``decode``), a load run per-request rows (phases ``ttft``/``tpot``,
    see :func:`ppplan.executor.load_report.load_rows`).

    Raises:
        ExecutorError: the plan is not stored.
    """
    run_id = f"run-{uuid.uuid4().hex[:12]}"
    rows = load_rows(report, run_id) if report.get("kind") == "load" else store_rows(report, run_id)
    with session_scope(database_url()) as session:
        n = repo.add_measurements(session, plan_id, rows)
    if n is None:
        raise ExecutorError("plan", plan_id, rule="is not a stored plan id; measurements are stored for stored plans")
    return n, run_id


def stored_measurements(plan_id: str, run_id: str | None = None) -> list[dict[str, Any]] | None:
    """The stored rows of ``plan_id`` as dicts (None for an unknown plan)."""
    cols = ("stage", "phase", "compute_s", "wait_s", "bytes_sent", "peak_bytes", "tokens", "micro_batch_size", "run_id")
    with session_scope(database_url()) as session:
        rows = repo.get_measurements(session, plan_id, run_id)
        if rows is None:
            return None
        return [{c: getattr(r, c) for c in cols} for r in rows]


def calibrate_from_measurements(
    plan_id: str, *, run_id: str | None = None, save: bool = True
) -> tuple[Any, Any, dict[str, Any]]:
    """Fit the plan's GPU kind from its stored measurements.

    Returns:
        (calibrated analytic profile, fitted Efficiency, summary with the stored profile id when
        ``save``). Plan with it: ``ppplan plan MODEL --profile <profile id or file>``.

    Raises:
        ExecutorError: unknown plan, no measurements, a TP > 1 plan.
    """
    plan = load_stored_plan(plan_id)
    if plan is None:
        raise ExecutorError("plan", rule=f"{plan_id!r} is not a stored plan id")
    # load runs' per-request TTFT/TPOT rows are latencies, not stage step times
    rows = [r for r in stored_measurements(plan_id, run_id) or [] if r["phase"] in STAGE_PHASES]
    prof, eff, summary = calibrate_rows(plan, rows, plan_id, run_id)
    if save:
        with session_scope(database_url()) as session:
            try:
                row, _ = repo.save_profile(session, prof)
                summary["profile_id"] = row.id
            except repo.Conflict:  # the same costs were stored before (an earlier calibration of this run)
                summary["profile_id"] = prof.profile_id
    return prof, eff, summary

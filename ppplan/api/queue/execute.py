"""The body of a planning job, the same on every queue: mark it running, plan and store, record the
outcome. Safe to run twice (a job retried after its worker died): planning is idempotent by content
hash, and a job that has ended is not run again."""

from __future__ import annotations

import logging
import time

from ppplan.api.errors import USER_ERRORS
from ppplan.api.http_errors import error_items
from ppplan.api.queue import records
from ppplan.api.queue.records import Outcome
from ppplan.api.schemas import ErrorBody, ErrorItem
from ppplan.api.service import check_http_request, plan_and_store
from ppplan.api.settings import Settings
from ppplan.api.store.engine import session_scope
from ppplan.api.store.migrate import store_fault
from ppplan.partitioner.request import PlanRequest

__all__ = ["run_job"]

log = logging.getLogger("ppplan.jobs")


def run_job(settings: Settings, job_id: str) -> None:
    """Run job ``job_id`` to its end and record the outcome (nothing when it has ended already).

    Raises:
        StoreNotReadyError: the store failed while the job started or ended (the queue may retry).
    """
    url = settings.database_url
    try:
        with session_scope(url) as session:
            body = records.start(session, job_id)
    except Exception as exc:
        fault = store_fault(exc, url)
        raise exc if fault is None else fault from None
    if body is None:
        return
    if settings.job_test_delay_s:
        time.sleep(settings.job_test_delay_s)
    outcome = _outcome(settings, job_id, body)
    with session_scope(url) as session:
        records.finish(session, job_id, outcome)
        records.prune(session, settings.max_jobs_kept)


def _outcome(settings: Settings, job_id: str, body: dict[str, object]) -> Outcome:
    try:
        req = PlanRequest.model_validate(body)
        check_http_request(req, max_gpus=settings.max_gpus, allow_model_paths=settings.allow_model_paths)
        with session_scope(settings.database_url) as session:
            row, created = plan_and_store(session, req)
            return Outcome(plan_id=row.id, cached=not created, http_status=201 if created else 200)
    except Exception as exc:
        fault = store_fault(exc, settings.database_url)
        if fault is not None:  # the answer a synchronous request would have had
            return Outcome(error=ErrorBody(detail=error_items(fault)), http_status=503)
        if isinstance(exc, USER_ERRORS):
            return Outcome(error=ErrorBody(detail=error_items(exc, body)), http_status=422)
        log.exception("job %s failed", job_id)  # a bug: the job fails, the server keeps serving
        item = ErrorItem(field="request", message=f"internal error; request id {job_id} (see the server log)")
        return Outcome(error=ErrorBody(detail=[item], request_id=job_id), http_status=500)

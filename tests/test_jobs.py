"""Asynchronous jobs: a bounded queue (429 with Retry-After), job records every server process reads,
SQLite jobs resumed after a restart, ``serve --workers`` only where jobs stay consistent, and on
PostgreSQL two ``ppplan serve`` processes sharing jobs through procrastinate, a killed worker's job
run again on the other."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from ppplan.api.app import create_app
from ppplan.api.liveserver import HOST, free_port
from ppplan.api.queue import records
from ppplan.api.settings import Settings
from ppplan.api.store import migrate
from ppplan.api.store.engine import session_scope
from ppplan.api.store.models import JobRow
from ppplan.partitioner.request import PlanRequest

BODY = {"model": "llama-3.1-8b", "gpus": "2xH100"}
CLI = [sys.executable, "-c", "from ppplan.api.cli import main; main()"]


def _poll(get: Any, job_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job: dict[str, Any] = get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("done", "failed") or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def test_queue_is_bounded_429_with_retry_after(db_url: str) -> None:
    settings = Settings(database_url=db_url, max_queued_jobs=2, job_workers=1, job_test_delay_s=1.0)
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as c:
        first = [c.post("/v1/plans", params={"mode": "async"}, json={**BODY, "concurrency": n}) for n in (8, 9)]
        assert [r.status_code for r in first] == [202, 202]
        r = c.post("/v1/plans", params={"mode": "async"}, json={**BODY, "concurrency": 10})
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"] == str(settings.job_retry_after_s)
        item = r.json()["detail"][0]
        assert "PPPLAN_MAX_QUEUED_JOBS" in item["message"] and "limit 2" in item["message"]
        assert c.post("/v1/plans", json={**BODY, "concurrency": 10}).status_code == 201  # sync requests go on
        assert c.get("/readyz").json()["jobs"]["active"] == 2
        for job in first:
            assert _poll(c.get, job.json()["id"])["status"] == "done"
        assert c.post("/v1/plans", params={"mode": "async"}, json={**BODY, "concurrency": 11}).status_code == 202


def test_sqlite_resumes_jobs_an_earlier_run_left(sqlite_url: str) -> None:
    migrate.upgrade(sqlite_url)
    with session_scope(sqlite_url) as s:  # as a server killed before it ran the job leaves it
        job_id = records.create(s, PlanRequest.model_validate(BODY), max_queued=10, retry_after_s=1).id
    with TestClient(create_app(Settings(database_url=sqlite_url)), base_url="http://127.0.0.1") as c:
        job = _poll(c.get, job_id)
        assert job["status"] == "done" and c.get(f"/v1/plans/{job['plan_id']}").status_code == 200


def test_serve_refuses_several_workers_on_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    from ppplan.api.cli import app

    res = CliRunner().invoke(app, ["serve", "--workers", "2"])
    assert res.exit_code == 2, res.output
    err = " ".join(res.stderr.split())
    assert err.startswith("error: workers: 2") and "PostgreSQL" in err and "--workers 1" in err


# ----------------------------------------------------------------- two servers on one PostgreSQL


@contextlib.contextmanager
def _serve(db_url: str, log: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``ppplan serve`` on a free loopback port, ready (``/readyz`` 200, its queue worker started)."""
    port = free_port()
    full_env = {**os.environ, "PPPLAN_DATABASE_URL": db_url, **env}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*CLI, "serve", "--host", HOST, "--port", str(port), "--log-level", "warning"],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server on {base} did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


QUEUE_ENV = {"PPPLAN_JOB_WORKERS": "1", "PPPLAN_JOB_HEARTBEAT_S": "0.5", "PPPLAN_JOB_STALLED_AFTER_S": "3"}


@pytest.mark.postgres
@pytest.mark.slow
def test_two_servers_share_jobs(pg_url: str, tmp_path: Path) -> None:
    migrate.upgrade(pg_url)
    with (
        _serve(pg_url, tmp_path / "a.log", **QUEUE_ENV) as (a, _),
        _serve(pg_url, tmp_path / "b.log", **QUEUE_ENV) as (b, _),
        httpx.Client(base_url=a, timeout=30) as ca,
        httpx.Client(base_url=b, timeout=30) as cb,
    ):
        assert ca.get("/readyz").json()["jobs"]["queue"] == "procrastinate"
        ids = []
        for n in range(4):
            r = ca.post("/v1/plans", params={"mode": "async"}, json={**BODY, "concurrency": 16 + n})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        for job_id in ids:  # submitted to A, polled to completion on B
            job = _poll(cb.get, job_id)
            assert job["status"] == "done" and job["http_status"] == 201, job
            assert cb.get(f"/v1/plans/{job['plan_id']}").status_code == 200
        assert cb.get("/v1/jobs/unknown").status_code == 404


@pytest.mark.postgres
@pytest.mark.slow
def test_a_killed_workers_job_is_run_again_on_the_other_server(pg_url: str, tmp_path: Path) -> None:
    migrate.upgrade(pg_url)
    env = {**QUEUE_ENV, "PPPLAN_JOB_TEST_DELAY_S": "4"}  # each run waits 4 s: time to kill its process
    with (
        _serve(pg_url, tmp_path / "a.log", **env) as (a, proc_a),
        _serve(pg_url, tmp_path / "b.log", **env) as (b, proc_b),
    ):
        r = httpx.post(f"{a}/v1/plans", params={"mode": "async"}, json=BODY, timeout=30)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 30
        runner = None
        while runner is None and time.monotonic() < deadline:
            with session_scope(pg_url) as s:
                row = s.get(JobRow, job_id)
                if row is not None and row.status == "running":
                    runner = row.runner
            time.sleep(0.1)
        assert runner is not None, "the job never started"
        pid = int(runner.rsplit(":", 1)[1])
        victim, survivor = (proc_a, b) if pid == proc_a.pid else (proc_b, a)
        assert pid == victim.pid
        victim.send_signal(signal.SIGKILL)  # mid-job: no graceful shutdown, no heartbeat any more
        victim.wait(timeout=10)
        job = _poll(lambda path: httpx.get(f"{survivor}{path}", timeout=10), job_id, timeout_s=90)
        assert job["status"] == "done" and job["http_status"] == 201, job
        with session_scope(pg_url) as s:
            row = s.scalars(select(JobRow).where(JobRow.id == job_id)).one()
            assert row.attempts == 2 and row.runner != runner

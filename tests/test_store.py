"""Repository functions on SQLite and PostgreSQL: idempotent plans, filters, conflicts, measurements."""

from __future__ import annotations

import datetime as dt
import threading
from functools import cache

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ppplan.api.service import plan_and_store, store_cli_plan
from ppplan.api.store import repo
from ppplan.api.store.engine import session_scope
from ppplan.api.store.models import MeasurementRow, PlanRequestRow, PlanRow
from ppplan.core.profile import Profile, ProfileError
from ppplan.partitioner.plan import Plan
from ppplan.partitioner.request import PlanRequest
from ppplan.profiler.analytic import analytic_profile, model_spec
from ppplan.profiler.resolve import plan_request


@cache
def _plan(model: str = "llama-3.1-8b", gpus: str = "4xH100", **kw: object) -> tuple[PlanRequest, Plan]:
    req = PlanRequest(model=model, gpus=gpus, **kw)  # type: ignore[arg-type]
    return req, plan_request(req)


def _count(s: Session, cls: type) -> int:
    return int(s.scalar(select(func.count()).select_from(cls)) or 0)


def test_save_plan_is_idempotent(session: Session) -> None:
    req, plan = _plan()
    h = repo.request_hash(req, None)
    row, created = repo.save_plan(session, req, plan, h)
    again, created2 = repo.save_plan(session, req, plan, h)
    assert created and not created2 and again.id == row.id
    assert _count(session, PlanRow) == 1 and _count(session, PlanRequestRow) == 1
    got = repo.get_plan(session, row.id)
    assert got is not None and Plan.model_validate(got.body) == plan
    assert (got.tp, got.pp, got.replicas) == (plan.degrees.tp, plan.degrees.pp, plan.degrees.replicas)
    assert got.throughput_tokens_per_s == pytest.approx(plan.metrics.throughput_tokens_per_s)
    assert repo.get_plan(session, "nope") is None


def test_request_hash_fills_defaults_and_tracks_inputs() -> None:
    a = PlanRequest(model="llama-3.1-8b", gpus="4xH100")
    b = PlanRequest(model="llama-3.1-8b", gpus="4xH100", prompt_tokens=2048, objective="throughput")
    c = PlanRequest(model="llama-3.1-8b", gpus="4xH100", concurrency=65)
    assert repo.request_hash(a, None) == repo.request_hash(b, None)
    assert repo.request_hash(a, None) != repo.request_hash(c, None)
    assert repo.request_hash(a, None) != repo.request_hash(a, "abc")


def test_plan_and_store_solves_once(session: Session) -> None:
    req = PlanRequest(model="llama-3.1-8b", gpus="2xH100")
    row, created = plan_and_store(session, req)
    row2, created2 = plan_and_store(session, req)
    assert created and not created2 and row.id == row2.id
    with pytest.raises(ProfileError, match="not a stored profile id"):
        plan_and_store(session, PlanRequest(model="llama-3.1-8b", gpus="2xH100", profile="deadbeef"))


def test_concurrent_identical_saves_keep_one_row(db_url: str) -> None:
    req, plan = _plan(gpus="8xH100")
    h = repo.request_hash(req, None)
    ids: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        try:
            with session_scope(db_url) as s:
                barrier.wait()
                row, _ = repo.save_plan(s, req, plan, h)
                ids.append(row.id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(ids)) == 1 and len(ids) == 8
    with session_scope(db_url) as s:
        assert _count(s, PlanRow) == 1 and _count(s, PlanRequestRow) == 1


def test_profiles_store_by_content_id(session: Session) -> None:
    prof = analytic_profile(model_spec("llama-3.1-8b"))
    row, created = repo.save_profile(session, prof)
    assert created and row.id == prof.profile_id
    _, created2 = repo.save_profile(session, prof)
    assert not created2
    assert repo.get_profile(session, prof.profile_id) == prof
    other = prof.model_copy(update={"provenance": {**prof.provenance, "note": "other"}})
    with pytest.raises(repo.Conflict, match="different provenance"):
        repo.save_profile(session, other)
    assert repo.get_profile(session, "0000") is None


def test_stored_profile_plans_and_cli_share_the_hash(session: Session, tmp_path: object) -> None:
    prof = analytic_profile(model_spec("llama-3.1-8b"))
    repo.save_profile(session, prof)
    req = PlanRequest(model="llama-3.1-8b", gpus="2xH100", profile=prof.profile_id)
    row, created = plan_and_store(session, req)
    assert created and row.request.profile_id == prof.profile_id
    path = tmp_path / "p.json"  # type: ignore[operator]
    path.write_text(prof.to_json())
    cli_req = PlanRequest(model="llama-3.1-8b", gpus="2xH100", profile=str(path))
    cli_row = store_cli_plan(session, cli_req, plan_request(cli_req, prof))
    assert cli_row.id == row.id  # same request, same profile content: one plan


def test_list_filters_and_pages(session: Session) -> None:
    for gpus, obj in (("2xH100", "throughput"), ("4xH100", "latency"), ("2xA100-80GB", "throughput")):
        plan_and_store(session, PlanRequest(model="llama-3.1-8b", gpus=gpus, objective=obj))  # type: ignore[arg-type]
    rows, total = repo.list_plans(session)
    assert total == 3 and len(rows) == 3
    assert [r.created for r in rows] == sorted((r.created for r in rows), reverse=True)
    _, n = repo.list_plans(session, repo.PlanFilter(gpu="h100-sxm-80gb"))
    assert n == 2
    _, n = repo.list_plans(session, repo.PlanFilter(objective="latency", model="LLAMA-3.1-8B"))
    assert n == 1
    page, n = repo.list_plans(session, limit=2, offset=2)
    assert n == 3 and len(page) == 1
    future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    _, n = repo.list_plans(session, repo.PlanFilter(created_after=future))
    assert n == 0
    _, n = repo.list_plans(session, repo.PlanFilter(created_before=future, created_after=future - dt.timedelta(days=1)))
    assert n == 3


def test_measurements_and_delete_conflict(session: Session) -> None:
    row, _ = plan_and_store(session, PlanRequest(model="llama-3.1-8b", gpus="4xH100", pp=2, tp=1))
    rows = [
        {
            "stage": k,
            "phase": "decode",
            "compute_s": 0.01 * (k + 1),
            "wait_s": 0.001,
            "bytes_sent": 8192,
            "peak_bytes": 10**10,
            "tokens": 64,
            "micro_batch_size": 32,
            "run_id": "r1",
        }
        for k in range(2)
    ]
    assert repo.add_measurements(session, row.id, rows) == 2
    got = repo.get_measurements(session, row.id)
    assert got is not None and [m.stage for m in got] == [0, 1] and got[1].compute_s == pytest.approx(0.02)
    assert repo.get_measurements(session, row.id, run_id="other") == []
    assert repo.add_measurements(session, "nope", rows) is None
    assert repo.get_measurements(session, "nope") is None
    with pytest.raises(ValueError, match="stage: 5 is not a stage"):
        repo.add_measurements(session, row.id, [{**rows[0], "stage": 5}])
    with pytest.raises(ValidationError):
        repo.add_measurements(session, row.id, [{**rows[0], "compute_s": -1}])
    with pytest.raises(repo.Conflict, match="force"):
        repo.delete_plan(session, row.id)
    assert repo.delete_plan(session, row.id, force=True) is True
    assert repo.delete_plan(session, row.id) is None
    assert _count(session, MeasurementRow) == 0 and _count(session, PlanRequestRow) == 0


def test_deleted_plan_can_be_planned_again(session: Session) -> None:
    req = PlanRequest(model="llama-3.1-8b", gpus="2xH100")
    row, _ = plan_and_store(session, req)
    assert repo.delete_plan(session, row.id)
    row2, created = plan_and_store(session, req)
    assert created and row2.id == row.id


def test_profile_round_trips_through_json_column(session: Session) -> None:
    prof = analytic_profile(model_spec("tiny-moe"))
    repo.save_profile(session, prof)
    session.expunge_all()
    back = repo.get_profile(session, prof.profile_id)
    assert isinstance(back, Profile) and back.profile_id == prof.profile_id


def test_default_store_is_a_sqlite_file_in_the_user_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    from platformdirs import user_data_dir

    from ppplan.api.settings import Settings

    monkeypatch.delenv("PPPLAN_DATABASE_URL", raising=False)
    assert Settings().database_url == f"sqlite:///{user_data_dir('ppplan')}/ppplan.db"
    monkeypatch.setenv("PPPLAN_DATABASE_URL", "postgresql+psycopg://u@h/db")
    assert Settings().database_url == "postgresql+psycopg://u@h/db"


def test_extreme_dates_and_offsets_are_no_internal_errors(client: TestClient) -> None:
    for when in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-23:59"):
        r = client.get("/v1/plans", params={"created_after": when})
        assert r.status_code == 200, r.text
    from typer.testing import CliRunner

    from ppplan.api.cli import app

    res = CliRunner().invoke(app, ["plans", "list", "--offset", str(2**63)])
    assert res.exit_code == 2

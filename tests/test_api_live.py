"""A live ``uvicorn`` server on loopback: 200+ concurrent plan requests (some identical), the CLI on the
same store, and a writer killed mid-transaction leaving a consistent SQLite file."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ppplan.api.liveserver import live_server as start_live_server
from ppplan.partitioner.plan import Plan
from ppplan.partitioner.request import PlanRequest
from ppplan.profiler.resolve import plan_request

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-c", "from ppplan.api.cli import main; main()"]


@pytest.fixture
def live_server(db_url: str, tmp_path: Path) -> Iterator[str]:
    """``uvicorn api.app:create_app`` in a subprocess on 127.0.0.1, on ``db_url``."""
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        try:
            with start_live_server(db_url, log=log, extra_args=["--backlog", "1024"]) as base:
                yield base
        except RuntimeError as exc:
            pytest.fail(f"{exc}: {log_path.read_text()[-2000:]}")


def _requests() -> list[dict[str, Any]]:
    distinct = [
        {"model": "llama-3.1-8b", "gpus": g, "concurrency": c}
        for g in ("2xH100", "4xH100", "8xH100")
        for c in range(16, 216, 10)
    ]  # 60 distinct
    bad = [{"model": "llama-3.1-70b", "gpus": "1xL4", "concurrency": c} for c in range(1, 11)]  # infeasible
    out = distinct * 4 + bad  # 250 requests, each good one four times
    random.Random(7).shuffle(out)
    return out


async def _fire(base: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as c:
        return list(await asyncio.gather(*(c.post("/v1/plans", json=b) for b in bodies)))


def test_concurrent_plan_requests(live_server: str, db_url: str) -> None:
    bodies = _requests()
    assert len(bodies) >= 200
    t0 = time.monotonic()
    answers = asyncio.run(_fire(live_server, bodies))
    elapsed = time.monotonic() - t0
    ids: dict[str, set[str]] = defaultdict(set)
    created: Counter[str] = Counter()
    expected: dict[str, Plan] = {}
    for body, r in zip(bodies, answers, strict=True):
        key = json.dumps(body, sort_keys=True)
        if body["model"] == "llama-3.1-70b":
            assert r.status_code == 422, r.text
            d = r.json()["detail"][0]
            assert d["field"] == "gpus" and d["needed_bytes"] > d["available_bytes"]
            continue
        assert r.status_code in (200, 201), r.text
        got = r.json()
        ids[key].add(got["id"])
        created[key] += r.status_code == 201
        plan = got["plan"]
        normalised = PlanRequest(**body).model_dump(mode="json", include=set(body))
        for k, v in normalised.items():
            assert plan["request"][k] == v
        if key not in expected:
            expected[key] = plan_request(PlanRequest(**body))
        want = expected[key]
        assert plan["degrees"] == want.degrees.model_dump(mode="json")
        assert plan["partition"] == want.partition
    assert all(len(v) == 1 for v in ids.values()), "identical requests got different plans"
    assert len({next(iter(v)) for v in ids.values()}) == 60, "different requests share an id"
    assert set(created.values()) == {1}, f"each request must be created exactly once: {created}"
    listing = httpx.get(f"{live_server}/v1/plans", params={"limit": 500}).json()
    assert listing["count"] == 60 and {p["id"] for p in listing["data"]} == {next(iter(v)) for v in ids.values()}
    from sqlalchemy import func, select

    from ppplan.api.store.engine import session_scope
    from ppplan.api.store.models import PlanRequestRow, PlanRow

    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(PlanRow)) == 60
        assert s.scalar(select(func.count()).select_from(PlanRequestRow)) == 60
    print(f"\n{len(bodies)} concurrent requests in {elapsed:.2f} s ({len(bodies) / elapsed:.0f} req/s)")


@pytest.mark.parametrize("empty_db_url", ["sqlite"], indirect=True)
def test_http_plan_is_listed_by_the_cli(live_server: str, db_url: str) -> None:
    r = httpx.post(f"{live_server}/v1/plans", json={"model": "llama-3.1-8b", "gpus": "8xH100"})
    assert r.status_code == 201
    pid = r.json()["id"]
    env = {**os.environ, "PPPLAN_DATABASE_URL": db_url}
    out = subprocess.run([*CLI, "plans", "list", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert [p["id"] for p in json.loads(out.stdout)["data"]] == [pid]
    out = subprocess.run(
        [*CLI, "plans", "export", pid, "--format", "vllm"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "VLLM_PP_LAYER_PARTITION" in out.stdout
    # and the other way round: a CLI plan is served over HTTP
    out = subprocess.run(
        [*CLI, "plan", "llama-3.1-8b", "--gpus", "2xH100"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    cli_id = out.stdout.strip().splitlines()[-1].split()[-1]
    assert httpx.get(f"{live_server}/v1/plans/{cli_id}").status_code == 200


_WRITER = textwrap.dedent("""
    import hashlib
    import sys
    import uuid
    from ppplan.api.store.engine import session_scope
    from ppplan.api.store import repo
    from ppplan.partitioner.request import PlanRequest
    from ppplan.profiler.resolve import plan_request

    url = sys.argv[1]
    req = PlanRequest(model="llama-3.1-8b", gpus="4xH100", pp=2, tp=1)
    plan = plan_request(req)
    rows = [{"stage": k % 2, "phase": "decode", "compute_s": 0.001, "tokens": 8} for k in range(2000)]
    i, run = 0, uuid.uuid4().hex
    with session_scope(url) as s:
        while True:
            h = hashlib.sha256(f"{run}-{i}".encode()).hexdigest()
            row, _ = repo.save_plan(s, req, plan, h)
            repo.add_measurements(s, row.id, rows)
            i += 1
            if i == 3:
                print("writing", flush=True)
""")


@pytest.mark.parametrize("empty_db_url", ["sqlite"], indirect=True)
def test_killed_writer_leaves_a_consistent_database(db_url: str, tmp_path: Path) -> None:
    path = db_url.removeprefix("sqlite:///")
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    rng = random.Random(3)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, str(script), db_url], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        con = sqlite3.connect(path)
        try:
            assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert con.execute("PRAGMA foreign_key_check").fetchall() == []
            orphan_req = con.execute(
                "SELECT count(*) FROM plan_requests r LEFT JOIN plans p ON p.request_id = r.id WHERE p.id IS NULL"
            ).fetchone()[0]
            assert orphan_req == 0, "a request row without its plan: a partial write survived"
            for (body,) in con.execute("SELECT body FROM plans"):
                Plan.model_validate_json(body)
            counts = con.execute("SELECT plan_id, count(*) FROM measurements GROUP BY plan_id").fetchall()
            assert all(n % 2000 == 0 for _, n in counts), "a measurement batch was stored in part"
        finally:
            con.close()

"""Fault benchmark of the service and its store: load, kill -9, a read-only store. Prints one table.

    python benchmarks/bench_faults.py                     # SQLite (a temporary file)
    python benchmarks/bench_faults.py --postgres-admin-url postgresql+psycopg://ppplan:ppplan@127.0.0.1/postgres

Every server is a ``uvicorn`` subprocess on 127.0.0.1 (:func:`ppplan.api.liveserver.live_server`);
request counts and rounds are bounded by flags, so the run stops by itself.

* load: ``--requests`` plan creations from ``--concurrency`` clients at once, a third of them
  repeats of earlier requests (idempotent by content hash). Lost = an acknowledged id (HTTP 200/201)
  missing from the store; duplicated = two stored rows for one request hash.
* kill -9: ``--rounds`` times, start a server, fire creations, SIGKILL it mid-flight, then check on
  a fresh server that every acknowledged id is stored and the database is intact (SQLite
  ``PRAGMA integrity_check``; PostgreSQL: the rows read back and their JSON parses).
* read-only (SQLite): the same store opened read-only (``mode=ro``): writes must answer 503 with
  the JSON error body, reads must still answer 200, and the file must be unchanged afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from ppplan.api.liveserver import HOST, free_port, live_server, spawn_server, wait_ready
from ppplan.api.store.migrate import upgrade

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: its sibling benchmarks
from bench_api import pg_database

MODELS = ("tiny-llama", "llama-3.1-8b")


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One line of the result table."""

    scenario: str
    store: str
    sent: int
    acknowledged: int
    lost: int
    duplicated: int
    integrity: str
    detail: str


def _body(i: int) -> dict[str, object]:
    """A distinct small request for ``i`` (cheap solves: the store is what is under test)."""
    prompt, output = 128 + i % 1024, 32 + (i // 1024) % 256  # within tiny-llama's 2048 positions
    return {"model": MODELS[i % 2], "gpus": f"{1 + i % 4}xH100", "prompt_tokens": prompt, "output_tokens": output}


async def _fire(
    base: str, bodies: list[dict[str, object]], concurrency: int, acked: list[str] | None = None
) -> list[str | None]:
    """POST every body with ``concurrency`` clients; the acknowledged plan id per body (None if not).
    Each acknowledged id is also appended to ``acked`` as it arrives."""
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:

        async def one(body: dict[str, object]) -> str | None:
            async with sem:
                try:
                    r = await client.post("/v1/plans", json=body)
                except httpx.TransportError:
                    return None
                if r.status_code not in (200, 201):
                    return None
                pid = str(r.json()["id"])
                if acked is not None:
                    acked.append(pid)
                return pid

        return list(await asyncio.gather(*(one(b) for b in bodies)))


def _stored(url: str) -> tuple[set[str], int, str]:
    """(plan ids stored, duplicated request hashes, integrity verdict) read straight from the database."""
    eng = create_engine(url)
    try:
        with eng.connect() as c:
            ids = {r[0] for r in c.execute(text("SELECT id FROM plans"))}
            # two plans for one request content: joined through plan_requests' content hash
            dup = c.execute(
                text(
                    "SELECT COUNT(*) - COUNT(DISTINCT r.content_hash) FROM plans p "
                    "JOIN plan_requests r ON r.id = p.request_id"
                )
            ).scalar_one()
            if eng.dialect.name == "sqlite":
                verdict = str(c.execute(text("PRAGMA integrity_check")).scalar_one())
            else:
                bodies = c.execute(text("SELECT body FROM plans")).all()
                verdict = "ok" if all(b[0] is not None for b in bodies) else "null bodies"
    finally:
        eng.dispose()
    return ids, int(dup), verdict


def load(url: str, store: str, requests: int, concurrency: int) -> Row:
    """Concurrent creations, a third of them repeats; lost and duplicated rows."""
    fresh = [_body(i) for i in range(requests - requests // 3)]
    bodies = fresh + fresh[: requests // 3]
    with live_server(url) as base:
        acks = asyncio.run(_fire(base, bodies, concurrency))
    got = {a for a in acks if a}
    ids, dup, verdict = _stored(url)
    return Row(
        scenario="load",
        store=store,
        sent=len(bodies),
        acknowledged=sum(a is not None for a in acks),
        lost=len(got - ids),
        duplicated=dup,
        integrity=verdict,
        detail=f"{len(got)} distinct ids for {len(fresh)} distinct requests",
    )


async def _fire_and_kill(
    proc: subprocess.Popen[bytes], base: str, bodies: list[dict[str, object]], concurrency: int, share: float
) -> list[str | None]:
    """Fire ``bodies`` and SIGKILL the server once ``share`` of them are acknowledged: mid-flight."""
    acked: list[str] = []
    task = asyncio.create_task(_fire(base, bodies, concurrency, acked))
    while len(acked) < share * len(bodies) and not task.done():
        await asyncio.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    return await task


def kill9(url: str, store: str, rounds: int, per_round: int, concurrency: int) -> Row:
    """SIGKILL the server while creations are in flight; every acknowledged id must survive."""
    acked: set[str] = set()
    sent = 0
    for k in range(rounds):
        port = free_port()
        proc = spawn_server(url, port)
        base = f"http://{HOST}:{port}"
        try:
            wait_ready(proc, base)
            bodies = [_body(10_000 + k * per_round + i) for i in range(per_round)]
            sent += len(bodies)

            acked |= {
                a for a in asyncio.run(_fire_and_kill(proc, base, bodies, concurrency, (k + 1) / (rounds + 1))) if a
            }
        finally:
            proc.kill()
            proc.wait()
    with live_server(url) as base:  # a fresh server must serve every acknowledged plan
        missing_http = sum(httpx.get(f"{base}/v1/plans/{pid}", timeout=30).status_code != 200 for pid in acked)
    ids, dup, verdict = _stored(url)
    return Row(
        scenario=f"kill -9 ×{rounds}",
        store=store,
        sent=sent,
        acknowledged=len(acked),
        lost=len(acked - ids) + missing_http,
        duplicated=dup,
        integrity=verdict,
        detail="acknowledged ids read back over HTTP after restart",
    )


def read_only(path: Path) -> Row:
    """The SQLite store opened read-only: writes 503 with the JSON body, reads 200, file unchanged."""
    rw = f"sqlite:///{path}"
    with live_server(rw) as base:
        pid = httpx.post(f"{base}/v1/plans", json=_body(99_999), timeout=60).json()["id"]
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    ro = f"sqlite:///file:{path}?mode=ro&uri=true"
    statuses: list[int] = []
    json_bodies = 0
    with live_server(ro) as base:
        for i in range(5):
            r = httpx.post(f"{base}/v1/plans", json=_body(200_000 + i), timeout=60)
            statuses.append(r.status_code)
            json_bodies += r.headers.get("content-type", "").startswith("application/json")
        read_ok = httpx.get(f"{base}/v1/plans/{pid}", timeout=30).status_code == 200
    after = hashlib.sha256(path.read_bytes()).hexdigest()
    ids, dup, verdict = _stored(rw)
    shown = ",".join(str(s) for s in sorted(set(statuses)))
    return Row(
        scenario="read-only store",
        store="sqlite",
        sent=len(statuses),
        acknowledged=sum(s in (200, 201) for s in statuses),
        lost=int(pid not in ids),
        duplicated=dup,
        integrity=verdict + ("" if before == after else ", FILE CHANGED"),
        detail=f"writes answered {shown} ({json_bodies}/{len(statuses)} JSON bodies); read of a stored "
        f"plan {'200' if read_ok else 'FAILED'}",
    )


def _print(rows: list[Row]) -> None:
    head = ("scenario", "store", "sent", "acked", "lost", "dup", "integrity", "detail")
    cells = [
        head,
        *[
            (
                r.scenario,
                r.store,
                str(r.sent),
                str(r.acknowledged),
                str(r.lost),
                str(r.duplicated),
                r.integrity,
                r.detail,
            )
            for r in rows
        ],
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head) - 1)]
    for c in cells:
        print("  ".join(x.ljust(w) for x, w in zip(c[:-1], widths, strict=True)) + "  " + c[-1])


def main() -> None:
    """Run the scenarios on SQLite (and PostgreSQL when an admin URL is given) and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=120, help="creations in the load scenario (≤ 2000)")
    ap.add_argument("--concurrency", type=int, default=16, help="clients at once (≤ 64)")
    ap.add_argument("--rounds", type=int, default=3, help="kill -9 rounds (≤ 10)")
    ap.add_argument("--per-round", type=int, default=40, help="creations fired per kill round (≤ 500)")
    ap.add_argument("--postgres-admin-url", default=os.environ.get("PPPLAN_TEST_POSTGRES_URL"))
    a = ap.parse_args()
    if not (1 <= a.requests <= 2000 and 1 <= a.concurrency <= 64 and 1 <= a.rounds <= 10 and 1 <= a.per_round <= 500):
        raise SystemExit("bounds: requests 1..2000, concurrency 1..64, rounds 1..10, per-round 1..500")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="ppplan-faults-") as tmp:
        for name in ("load", "kill", "ro"):
            path = Path(tmp) / f"{name}.db"
            upgrade(f"sqlite:///{path}")
            if name == "load":
                rows.append(load(f"sqlite:///{path}", "sqlite", a.requests, a.concurrency))
            elif name == "kill":
                rows.append(kill9(f"sqlite:///{path}", "sqlite", a.rounds, a.per_round, a.concurrency))
            else:
                rows.append(read_only(path))
    if a.postgres_admin_url:
        for scenario in ("load", "kill"):
            with pg_database(a.postgres_admin_url) as url:
                upgrade(url)
                if scenario == "load":
                    rows.append(load(url, "postgresql", a.requests, a.concurrency))
                else:
                    rows.append(kill9(url, "postgresql", a.rounds, a.per_round, a.concurrency))
    _print(rows)


if __name__ == "__main__":
    main()

"""Plan-request latency (p50/p99) and throughput against a live ``uvicorn`` server on 127.0.0.1.

    python benchmarks/bench_api.py                       # SQLite (a temporary file)
    python benchmarks/bench_api.py --postgres-admin-url postgresql+psycopg://ppplan:ppplan@127.0.0.1/postgres

For each database: a profile is stored once (the "cached profile"), then
  * solve:   distinct requests with that profile, each a DP search plus an insert (sequential);
  * repeat:  the same request again and again, answered from the store (sequential);
  * load:    distinct requests from --concurrency clients at once (throughput).
Target: p99 under 50 ms for a solve with a cached profile. Request counts are bounded by flags.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ppplan.api.liveserver import HOST, live_server
from ppplan.api.store.migrate import upgrade
from ppplan.profiler.analytic import analytic_profile, model_spec

MODEL = "llama-3.1-8b"


@contextmanager
def serve(url: str) -> Iterator[str]:
    """A uvicorn subprocess on ``url``'s store (migrated first, as ``ppplan db upgrade`` would); yields its
    base URL."""
    upgrade(url)
    try:
        with live_server(url) as base:
            yield base
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None


@contextmanager
def pg_database(admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    name = f"ppplan_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _body(i: int, profile_id: str) -> dict[str, Any]:
    gpus = ("2xH100", "4xH100", "8xH100")[i % 3]
    return {"model": MODEL, "gpus": gpus, "concurrency": 8 + i // 3, "profile": profile_id}


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _report(name: str, ms: list[float]) -> str:
    return (
        f"{name:<28} n={len(ms):<5} p50 {statistics.median(ms):7.2f} ms  p99 {_pct(ms, 0.99):7.2f} ms  "
        f"max {max(ms):7.2f} ms"
    )


async def _load(base: str, bodies: list[dict[str, Any]], clients: int) -> tuple[float, list[float]]:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    lat: list[float] = []

    async def worker(c: httpx.AsyncClient) -> None:
        while not queue.empty():
            b = queue.get_nowait()
            t = time.perf_counter()
            r = await c.post("/v1/plans", json=b)
            lat.append((time.perf_counter() - t) * 1e3)
            if r.status_code not in (200, 201):
                raise SystemExit(f"load: {r.status_code} {r.text[:300]}")

    async with httpx.AsyncClient(base_url=base, timeout=60) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for _ in range(clients)))
        return time.perf_counter() - t0, lat


def bench(label: str, url: str, n: int, clients: int) -> list[str]:
    """Run the three measurements on ``url``; returns report lines."""
    prof = analytic_profile(model_spec(MODEL)).model_dump(mode="json")
    lines = [f"== {label}"]
    with serve(url) as base, httpx.Client(base_url=base, timeout=60) as c:
        r = c.post("/v1/profiles", json=prof)
        pid = r.json()["id"]
        c.post("/v1/plans", json=_body(10**6, pid))  # warm-up: the model's first plan builds caches
        solve, repeat = [], []
        for i in range(n):
            t = time.perf_counter()
            r = c.post("/v1/plans", json=_body(i, pid))
            solve.append((time.perf_counter() - t) * 1e3)
            if r.status_code != 201:
                raise SystemExit(f"solve: {r.status_code} {r.text[:300]}")
        for _ in range(n):
            t = time.perf_counter()
            r = c.post("/v1/plans", json=_body(0, pid))
            repeat.append((time.perf_counter() - t) * 1e3)
            if r.status_code != 200:
                raise SystemExit(f"repeat: {r.status_code} {r.text[:300]}")
        lines.append(_report("solve (cached profile)", solve))
        lines.append(_report("repeat (stored plan)", repeat))
        bodies = [_body(n + i, pid) for i in range(2 * n)]
        wall, lat = asyncio.run(_load(base, bodies, clients))
        lines.append(_report(f"load x{clients} clients (solves)", lat) + f"  {len(bodies) / wall:6.0f} req/s")
    return lines


def main() -> None:
    """Parse flags, benchmark SQLite (and PostgreSQL when given), print the figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200, help="requests per sequential measurement (load: 2n)")
    ap.add_argument("--concurrency", type=int, default=16, help="clients in the throughput run")
    ap.add_argument(
        "--postgres-admin-url",
        default=os.environ.get("PPPLAN_TEST_POSTGRES_URL"),
        help="PostgreSQL URL allowed to CREATE DATABASE (default $PPPLAN_TEST_POSTGRES_URL)",
    )
    args = ap.parse_args()
    if not 1 <= args.n <= 5000 or not 1 <= args.concurrency <= 256:
        ap.error("-n must be 1..5000 and --concurrency 1..256")
    out = [f"ppplan API benchmark: {MODEL}, {os.cpu_count()} CPUs, server on {HOST} (1 uvicorn worker)"]
    with tempfile.TemporaryDirectory() as d:
        out += bench("SQLite (WAL)", f"sqlite:///{d}/bench.db", args.n, args.concurrency)
    if args.postgres_admin_url:
        with pg_database(args.postgres_admin_url) as url:
            out += bench("PostgreSQL", url, args.n, args.concurrency)
    else:
        out.append("== PostgreSQL skipped: pass --postgres-admin-url or set PPPLAN_TEST_POSTGRES_URL")
    print("\n".join(out))


if __name__ == "__main__":
    main()

"""Metric ingestion and query speed of the API, on SQLite and PostgreSQL (run by hand, not a test).

    python bench/bench_metrics.py                     # both backends, in-process HTTP (TestClient)
    python bench/bench_metrics.py --transport uvicorn # a real uvicorn server on 127.0.0.1, httpx over TCP
    python bench/bench_metrics.py --backends sqlite --batches 20

Each backend gets a fresh database (a temporary SQLite file; a `copd_bench_<hex>` database on the
PostgreSQL at --pg, dropped afterwards). Ingestion: --batches POSTs of 10,000 new points each, then the
same batches again (the idempotent overwrite path). Query: GET of one 100,000-point series with
max_points=1000 (min/max downsampled), median of --repeats. Request bodies are encoded before timing.
Targets (issue 3): >= 20,000 points/s on SQLite; query under 200 ms.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from contract.settings import Settings  # noqa: E402
from server.app import create_app  # noqa: E402
from server.db import upgrade  # noqa: E402

TOKEN = "bench-admin-token-0123456789abcdef"
BATCH = 10_000
SPEC = {"name": "bench", "strategy": "copd",
        "experts": [{"name": "text", "domain": "builtin:arith"}, {"name": "image", "domain": "builtin:grid"}]}


@contextmanager
def database(backend: str, pg: str) -> Iterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as d:
            yield f"sqlite:///{d}/bench.db"
        return
    import psycopg

    name = f"copd_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{pg} dbname=postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = dict(p.split("=", 1) for p in pg.split())
    try:
        yield f"postgresql+psycopg://{params.get('user', 'postgres')}@{params.get('host', '127.0.0.1')}:{params.get('port', '5432')}/{name}"
    finally:
        with psycopg.connect(f"{pg} dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def client(url: str, transport: str, data_dir: Path) -> Iterator[httpx.Client]:
    settings = Settings(data_dir=data_dir, database_url=url, api_token=TOKEN, reaper_interval_s=0, broker_url=None)
    app = create_app(settings)
    headers = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    if transport == "testclient":
        from fastapi.testclient import TestClient

        with TestClient(app, headers=headers) as c:
            yield c
        return
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=120) as c:
            yield c
    finally:
        server.should_exit = True
        thread.join(10)


def batch_body(b: int) -> bytes:
    """10,000 points of one series (expert text, key loss/grpo), steps b*10k .. b*10k+9999."""
    t0 = 1.7e9
    pts = [{"expert": "text", "key": "loss/grpo", "step": s, "value": math.sin(s / 100.0) + (s % 7) * 0.01,
            "wall_time": t0 + s} for s in range(b * BATCH, (b + 1) * BATCH)]
    return json.dumps({"points": pts}).encode()


def bench_backend(backend: str, args: argparse.Namespace) -> dict[str, float]:
    with database(backend, args.pg) as url, tempfile.TemporaryDirectory() as data_dir:
        upgrade(url)
        with client(url, args.transport, Path(data_dir)) as c:
            run_id = c.post("/api/v1/runs", content=json.dumps(SPEC).encode()).json()["id"]
            bodies = [batch_body(b) for b in range(args.batches)]
            rates = {}
            for label in ("insert", "overwrite"):
                t = time.perf_counter()
                for body in bodies:
                    r = c.post(f"/api/v1/runs/{run_id}/metrics", content=body)
                    assert r.status_code == 200 and r.json()["points"] == BATCH, r.text
                rates[label] = args.batches * BATCH / (time.perf_counter() - t)
            params = {"key": "loss/grpo", "expert": "text", "max_points": 1000}
            n = len(c.get(f"/api/v1/runs/{run_id}/metrics", params={**params, "max_points": 100_000}).json()["series"][0]["points"])
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                r = c.get(f"/api/v1/runs/{run_id}/metrics", params=params)
                times.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200 and len(r.json()["series"][0]["points"]) <= 1000
    return {"insert": rates["insert"], "overwrite": rates["overwrite"], "series": n,
            "query_median_ms": statistics.median(times), "query_max_ms": max(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--transport", choices=["testclient", "uvicorn"], default="testclient")
    ap.add_argument("--batches", type=int, default=10, help="10k-point batches (10 = a 100k-point series)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--pg", default="host=127.0.0.1 port=5432 user=postgres", help="libpq DSN of the PostgreSQL server")
    args = ap.parse_args()
    print(f"transport: {args.transport}; {args.batches} batches x {BATCH} points; query max_points=1000")
    print(f"{'backend':<10} {'insert pts/s':>13} {'overwrite pts/s':>16} {'series pts':>11} {'query median':>13} {'query max':>10}")
    for backend in args.backends.split(","):
        r = bench_backend(backend, args)
        print(f"{backend:<10} {r['insert']:>13,.0f} {r['overwrite']:>16,.0f} {r['series']:>11,} "
              f"{r['query_median_ms']:>10.1f} ms {r['query_max_ms']:>7.1f} ms")


if __name__ == "__main__":
    main()

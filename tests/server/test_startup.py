"""Startup and plumbing: migrations, the un-migrated refusal, no torch, the Celery dispatcher, downsampling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi.testclient import TestClient

from server.app import create_app
from server.db import make_engine, upgrade
from server.dispatch import CeleryDispatcher, broker_config
from server.downsample import minmax_buckets
from server.models import Base
from tests.server.conftest import ADMIN, SPEC, make_settings

ROOT = Path(__file__).resolve().parents[2]


def test_unmigrated_database_is_refused_with_the_upgrade_command(backend: str, scratch_url: str, tmp_path) -> None:
    app = create_app(make_settings(tmp_path, scratch_url))
    with pytest.raises(RuntimeError, match="copd db upgrade"):
        with TestClient(app):
            pass
    upgrade(scratch_url)
    with TestClient(create_app(make_settings(tmp_path, scratch_url))) as c:
        assert c.get("/healthz").status_code == 200


def test_migrations_match_the_models(backend: str, db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_sqlite_runs_in_wal_with_foreign_keys(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_server_never_imports_torch() -> None:
    code = ("import sys, server.app, server.cli; server.app.create_app; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_celery_dispatcher_writes_to_the_embedded_broker(tmp_path) -> None:
    settings = make_settings(tmp_path, "sqlite://")
    CeleryDispatcher(settings).send("copd.advance", run_id=7)
    opts = broker_config(settings)["broker_transport_options"]
    assert opts["data_folder_in"] == opts["data_folder_out"]  # one folder: workers also send (chord joins)
    files = list(Path(opts["data_folder_out"]).glob("*.msg"))
    assert len(files) == 1
    message = json.loads(files[0].read_text())
    assert message["headers"]["task"] == "copd.advance"
    assert "7" in message["body"] or message["headers"].get("kwargsrepr", "").find("7") >= 0


def test_minmax_buckets_by_hand() -> None:
    pts = [(0, 1.0), (1, 5.0), (2, 3.0), (3, -2.0), (4, 0.0), (5, 0.5), (6, 9.0), (7, 9.0)]
    assert minmax_buckets(pts, 100) == pts  # short: unchanged
    # 4 points → 2 buckets over steps 0..7: [0..3] keeps (3,-2) and (1,5); [4..7] keeps (4,0) and (6,9)
    assert minmax_buckets(pts, 4) == [(1, 5.0), (3, -2.0), (4, 0.0), (6, 9.0)]
    assert minmax_buckets([(0, 1.0), (10, 1.0), (11, 1.0)], 2) == [(0, 1.0)]  # flat bucket keeps one point
    with pytest.raises(ValueError):
        minmax_buckets(pts, 1)


def test_openapi_documents_the_api(api) -> None:
    r = api.anon.get("/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    for p in ("/healthz", "/api/v1/runs", "/api/v1/runs/{run_id}/knobs", "/api/v1/runs/{run_id}/metrics",
              "/api/v1/runs/{run_id}/heartbeats", "/api/v1/runs/{run_id}/checkpoints/{checkpoint_id}/final"):
        assert p in paths
    assert api.anon.get("/docs").status_code == 200


def test_body_over_the_limit_is_413(monkeypatch, sqlite_url: str, tmp_path) -> None:
    import server.app

    monkeypatch.setattr(server.app, "MAX_BODY", 1000)
    app = create_app(make_settings(tmp_path, sqlite_url))
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as c:
        r = c.post("/api/v1/runs", content=b'{"name": "' + b"x" * 2000 + b'"}',
                   headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["detail"].startswith("body")


def test_reaper_loop_runs_in_the_lifespan(backend: str, db_url: str, tmp_path) -> None:
    import time

    settings = make_settings(tmp_path, db_url, reaper_interval_s=0.05, heartbeat_timeout_s=0.2)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN}"}) as c:
        run_id = c.post("/api/v1/runs", json=SPEC | {"name": "reaped"}).json()["id"]
        c.post(f"/api/v1/runs/{run_id}/start")
        c.post(f"/api/v1/runs/{run_id}/status", json={"status": "running"})
        c.post(f"/api/v1/runs/{run_id}/heartbeats", json={"unit": "c1/rl/text", "worker": "w"})  # then silence
        deadline = time.monotonic() + 10
        while c.get(f"/api/v1/runs/{run_id}").json()["status"] != "crashed":
            assert time.monotonic() < deadline, "the reaper never ran"
            time.sleep(0.05)

"""API tests against real databases: every test runs on SQLite and on PostgreSQL (127.0.0.1:5432).

One migrated database per backend per test session, one app per backend per module, tables emptied
before each test. Without a reachable PostgreSQL the postgres cases skip, or fail when CI is set.
"""

from __future__ import annotations

import copy
import os
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from copd.settings import Settings
from server.app import create_app
from server.db import upgrade
from server.deps import get_dispatcher
from server.dispatch import RecordingDispatcher

ADMIN = "test-admin-token-0123456789abcdef"
PG_ADMIN_DSN = os.environ.get("COPD_TEST_PG", "host=127.0.0.1 port=5432 user=postgres")
SPEC: dict[str, Any] = {
    "name": "tiny-copd", "base_model": "builtin:tiny", "strategy": "copd",
    "experts": [{"name": "text", "domain": "builtin:arith"}, {"name": "image", "domain": "builtin:grid"},
                {"name": "video", "domain": "builtin:frames"}],
    "topology": "all_pairs", "schedule": {"cycles": 4, "rl_steps": 3, "opd_steps": 2},
}
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
# Children first; lineage columns cleared first since runs ⇄ checkpoints reference each other.
_TRUNCATE = ["UPDATE runs SET parent_run_id = NULL, parent_checkpoint_id = NULL", "DELETE FROM heartbeats",
             "DELETE FROM unit_markers", "DELETE FROM samples",
             "DELETE FROM events", "DELETE FROM checkpoints", "DELETE FROM metrics", "DELETE FROM knob_versions",
             "DELETE FROM experts", "DELETE FROM runs", "DELETE FROM tokens WHERE name <> 'admin'"]


def spec(**changes: Any) -> dict[str, Any]:
    """The example spec with top-level fields replaced."""
    out = copy.deepcopy(SPEC)
    out.update(changes)
    return out


# ---- databases


def _pg_connect(dbname: str = "postgres"):
    import psycopg

    return psycopg.connect(f"{PG_ADMIN_DSN} dbname={dbname}", autocommit=True, connect_timeout=3)


@pytest.fixture(scope="session")
def pg_available() -> None:
    try:
        _pg_connect().close()
    except Exception as err:  # noqa: BLE001 - any failure means "not reachable"
        msg = f"PostgreSQL not reachable at {PG_ADMIN_DSN} ({type(err).__name__}: {str(err).strip()[:200]})"
        if os.environ.get("CI"):
            pytest.fail(msg + "; CI is set, so this is an error (start it with .ci/run or pg_ctlcluster)")
        pytest.skip(msg)


def new_pg_database(migrate: bool = True) -> tuple[str, str]:
    """A fresh database: (SQLAlchemy URL, name)."""
    name = f"copd_test_{uuid.uuid4().hex[:12]}"
    with _pg_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = dict(p.split("=", 1) for p in PG_ADMIN_DSN.split())
    url = (f"postgresql+psycopg://{params.get('user', 'postgres')}@{params.get('host', '127.0.0.1')}:"
           f"{params.get('port', '5432')}/{name}")
    if migrate:
        upgrade(url)
    return url, name


def drop_pg_database(name: str) -> None:
    with _pg_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_url(pg_available: None) -> Iterator[str]:
    url, name = new_pg_database()
    yield url
    drop_pg_database(name)


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'copd.db'}"
    upgrade(url)
    return url


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def db_url(backend: str, request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{backend}_url")


@pytest.fixture
def scratch_url(backend: str, request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """An empty, un-migrated database of the current backend, for startup tests."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'scratch.db'}"
        return
    request.getfixturevalue("pg_available")
    url, name = new_pg_database(migrate=False)
    yield url
    drop_pg_database(name)


# ---- the app


@dataclass
class Api:
    """A running app: `client` sends the admin token, `anon` sends none."""

    client: TestClient
    anon: TestClient
    dispatcher: RecordingDispatcher
    db_url: str
    backend: str

    def create_run(self, **changes: Any) -> dict[str, Any]:
        r = self.client.post("/api/v1/runs", json=spec(**changes))
        assert r.status_code == 201, r.text
        return r.json()

    def act(self, run_id: int, action: str) -> Any:
        return self.client.post(f"/api/v1/runs/{run_id}/{action}")

    def report(self, run_id: int, status: str, message: str | None = None) -> Any:
        body = {"status": status} | ({"message": message} if message else {})
        return self.client.post(f"/api/v1/runs/{run_id}/status", json=body)

    def running_run(self) -> dict[str, Any]:
        run = self.create_run()
        assert self.act(run["id"], "start").status_code == 202
        r = self.report(run["id"], "running")
        assert r.status_code == 200, r.text
        return r.json()


def make_settings(data_dir, db_url: str, **kw: Any) -> Settings:
    """Settings for a test app; nothing is read from the machine's COPD_* variables that matters here."""
    values = dict(data_dir=data_dir, database_url=db_url, api_token=ADMIN, broker_url=None, reaper_interval_s=0)
    values.update(kw)
    return Settings(**values)


@pytest.fixture(scope="module")
def server(db_url: str, backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    app = create_app(make_settings(tmp_path_factory.mktemp("data"), db_url))
    dispatcher = RecordingDispatcher()
    app.dependency_overrides[get_dispatcher] = lambda: dispatcher
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        yield Api(client=client, anon=TestClient(app), dispatcher=dispatcher, db_url=db_url, backend=backend)


@pytest.fixture
def api(server: Api) -> Api:
    """The module's app over emptied tables."""
    with server.client.app.state.engine.begin() as conn:
        for stmt in _TRUNCATE:
            conn.execute(text(stmt))
    server.dispatcher.sent.clear()
    server.dispatcher.fail = False
    return server

"""Faults the API must survive: concurrent overlapping metric batches, lost database connections, hostile
bodies (large, unauthenticated, with many errors). Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import random
import threading

import pytest

from server import crud
from server.schemas import MetricPointIn
from tests.server.conftest import SPEC, Api


def test_concurrent_overlapping_metric_batches_all_succeed(api: Api) -> None:
    """8 writers at once, each an idempotent retry of overlapping points in its own order: no deadlock."""
    run_id = api.create_run()["id"]
    sessions = api.client.app.state.sessions
    pts = [MetricPointIn(expert=e, key=k, step=s, value=float(s)) for e in ("text", "image") for k in ("a", "b")
           for s in range(250)]  # 1,000 points; each writer sends 500 of them, overlapping the others'
    errors: list[BaseException] = []
    start = threading.Barrier(8)
    batches = [random.Random(seed).sample(pts, 500) for seed in range(8)]

    def write(seed: int) -> None:
        batch = batches[seed]
        start.wait()
        try:
            for _ in range(3):
                with sessions() as session:
                    crud.write_metrics(session, run_id=run_id, points=batch)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    r = api.client.get(f"/api/v1/runs/{run_id}/metrics", params={"max_points": 100_000})
    got = {(s["expert"], s["key"], p["step"]) for s in r.json()["series"] for p in s["points"]}
    assert got == {(p.expert, p.key, p.step) for b in batches for p in b}
    assert sum(len(s["points"]) for s in r.json()["series"]) == len(got)


def test_many_errors_are_capped_and_counted(api: Api) -> None:
    """10,000 empty points are 30,000 errors: the first 20 are listed, the rest counted (quadratic before)."""
    run_id = api.create_run()["id"]
    r = api.client.post(f"/api/v1/runs/{run_id}/metrics", json={"points": [{}] * 10_000})
    assert r.status_code == 422
    body = r.json()
    assert len(body["errors"]) == 20 and body["error_count"] == 30_000
    assert body["errors"][0] == {"field": "points.0.key", "message": "Field required", "type": "missing"}
    assert body["detail"].endswith("(+29997 more)")
    changes = {f"k{i}": 1 for i in range(20_000)}
    r = api.client.patch(f"/api/v1/runs/{run_id}/knobs", json={"expected_version": 0, "changes": changes})
    assert r.status_code == 422 and r.json()["error_count"] == 20_000 and len(r.json()["errors"]) == 20
    assert r.json()["detail"].startswith("changes.k0: Extra inputs are not permitted")
    changes = {"beta": {f"x{i}": "high" for i in range(20_000)}}  # one union, 20,000 bad members
    r = api.client.patch(f"/api/v1/runs/{run_id}/knobs", json={"expected_version": 0, "changes": changes})
    assert r.status_code == 422 and len(r.json()["errors"]) == 20 and r.json()["error_count"] > 20_000


def test_union_errors_of_many_members_take_linear_time() -> None:
    """field_errors over 200,000 errors of 100,000 union members (minutes when it was quadratic)."""
    from server.errors import field_errors

    errs = []
    for i in range(100_000):
        errs.append({"loc": ("beta", "float", i), "msg": "Input should be a valid number", "type": "float_type"})
        errs.append({"loc": ("beta", "dict[str,float]", f"x{i}"), "msg": "bad", "type": "float_parsing"})
    out = field_errors(errs, "changes", limit=5)
    assert len(out) == 5 and all(e["field"].startswith("changes.beta") for e in out)


# ---- a database that restarts (its own PostgreSQL on a spare port)


@pytest.fixture
def own_pg_app(tmp_path):
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.db import upgrade
    from tests.server.conftest import ADMIN, make_settings
    from tests.services import OwnPostgres

    pg = OwnPostgres()
    try:
        upgrade(pg.url)
        app = create_app(make_settings(tmp_path, pg.url))
        with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as client:
            yield pg, client
    finally:
        pg.close()


@pytest.mark.chaos
def test_a_database_restart_is_503_while_down_and_invisible_after(own_pg_app) -> None:
    pg, c = own_pg_app
    run_id = c.post("/api/v1/runs", json=SPEC).json()["id"]
    for _ in range(3):  # several pooled connections, all of them dropped by the restart
        assert c.get(f"/api/v1/runs/{run_id}").status_code == 200
    pg.restart()
    # pool_pre_ping: the stale pooled connections are replaced, no request sees the restart
    assert c.get(f"/api/v1/runs/{run_id}").status_code == 200
    assert c.post(f"/api/v1/runs/{run_id}/metrics", json={"points": [{"key": "k", "step": 1, "value": 1}]}).status_code == 200
    pg.stop()
    try:
        r = c.get(f"/api/v1/runs/{run_id}")
        assert r.status_code == 503, r.text
        assert r.json()["detail"].startswith("database: unavailable") and r.headers["retry-after"]
        r = c.post(f"/api/v1/runs/{run_id}/metrics", json={"points": [{"key": "k", "step": 2, "value": 2}]})
        assert r.status_code == 503
    finally:
        pg.start()
    assert c.get(f"/api/v1/runs/{run_id}").status_code == 200


@pytest.mark.chaos
def test_the_workers_client_rides_out_a_database_restart(own_pg_app) -> None:
    """The client retries a 503 within retry_s: a report sent while the database is down lands once it is back."""
    import uvicorn

    from contract.client import Client
    from tests.server.conftest import ADMIN
    from tests.services import free_port

    pg, c = own_pg_app
    run_id = c.post("/api/v1/runs", json=SPEC).json()["id"]
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(c.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    back = threading.Timer(1.5, pg.start)
    try:
        api = Client(f"http://127.0.0.1:{port}", ADMIN, retry_s=60)
        while not srv.started:
            threading.Event().wait(0.05)
        pg.stop()
        back.start()
        assert api.post_metrics(run_id, [{"key": "k", "step": 1, "value": 1.0}]) == 1
        assert api.get_run(run_id).id == run_id
        api.close()
    finally:
        back.join()
        srv.should_exit = True
        thread.join(30)
    [series] = c.get(f"/api/v1/runs/{run_id}/metrics").json()["series"]
    assert [p["step"] for p in series["points"]] == [1]


def test_a_resumable_failure_crashes_the_run_and_resume_continues_it(api: Api) -> None:
    run_id = api.running_run()["id"]
    r = api.client.post(f"/api/v1/runs/{run_id}/status",
                        json={"status": "failed", "resumable": True, "message": "no space left on device at /x"})
    assert r.status_code == 200 and r.json()["status"] == "crashed" and r.json()["finished_at"] is None
    events = api.client.get(f"/api/v1/runs/{run_id}/events", params={"level": "error"}).json()["items"]
    assert "failed (resumable): running → crashed" in events[-1]["message"] and "/x" in events[-1]["message"]
    assert api.act(run_id, "resume").status_code == 202
    other = api.running_run()["id"]  # without `resumable` a failure is final, as before
    assert api.client.post(f"/api/v1/runs/{other}/status", json={"status": "failed"}).json()["status"] == "failed"
    assert api.act(other, "resume").status_code == 409


# ---- bodies: authenticated first, capped, parsed off the event loop


@pytest.fixture
def parses(monkeypatch):
    """Every body server.guard parses, with whether it was parsed inside the event loop."""
    import asyncio

    from server import guard

    seen: list[tuple[int, bool]] = []
    real = guard.parse_and_check

    def spy(body: bytes):
        try:
            asyncio.get_running_loop()
            in_loop = True
        except RuntimeError:
            in_loop = False
        seen.append((len(body), in_loop))
        return real(body)

    monkeypatch.setattr(guard, "parse_and_check", spy)
    return seen


def test_bodies_are_not_read_before_the_token_is_checked(api: Api, parses) -> None:
    run_id = api.create_run()["id"]
    parses.clear()
    big = b'{"points": [' + b'{"key": "k", "step": 1, "value": 1},' * 100_000 + b"{}]}"  # 3.6 MB
    headers = {"content-type": "application/json"}
    r = api.anon.post(f"/api/v1/runs/{run_id}/metrics", content=big, headers=headers)
    assert r.status_code == 401 and r.json()["detail"].startswith("Authorization")
    r = api.anon.post(f"/api/v1/runs/{run_id}/metrics", content=big,
                      headers=headers | {"Authorization": "Bearer not-a-token-at-all-0000"})
    assert r.status_code == 401
    reader = api.client.post("/api/v1/tokens", json={"name": "reader", "role": "read"}).json()["token"]
    parses.clear()
    r = api.anon.post(f"/api/v1/runs/{run_id}/metrics", content=big,
                      headers=headers | {"Authorization": f"Bearer {reader}"})
    assert r.status_code == 403 and "needs a write token" in r.json()["detail"]
    assert parses == []  # none of the three was parsed
    r = api.client.post(f"/api/v1/runs/{run_id}/metrics", content=big, headers=headers)
    assert r.status_code == 422 and r.json()["detail"].startswith("points")  # the writer's is, and refused
    assert parses == [(len(big), False)]  # in a worker thread, not the event loop


def test_bodies_are_capped_per_route(api: Api, parses) -> None:
    run_id = api.create_run()["id"]
    parses.clear()
    r = api.client.post(f"/api/v1/runs/{run_id}/events", json={"message": "x" * (2 * 2**20)})
    assert r.status_code == 413 and r.json()["detail"] == "body: request too large (limit 1048576 bytes)"
    assert parses == []
    pts = [{"expert": "text", "key": "k/" + "x" * 120, "step": i, "value": 0.5, "wall_time": 1.7e9 + i}
           for i in range(10_000)]  # 2 MB: metric batches may be larger than other bodies
    r = api.client.post(f"/api/v1/runs/{run_id}/metrics", json={"points": pts})
    assert r.status_code == 200 and r.json() == {"points": 10_000}


def test_a_body_being_parsed_does_not_hold_up_other_requests(api: Api, monkeypatch) -> None:
    from server import guard

    run_id = api.create_run()["id"]
    entered, release = threading.Event(), threading.Event()
    real = guard.parse_and_check

    def slow(body: bytes):
        entered.set()
        release.wait(120)
        return real(body)

    monkeypatch.setattr(guard, "parse_and_check", slow)
    answers: dict[str, int] = {}
    post = threading.Thread(target=lambda: answers.__setitem__("post", api.client.post(
        f"/api/v1/runs/{run_id}/events", json={"message": "slow"}).status_code))
    post.start()
    assert entered.wait(60)
    # the same client, so the same event loop as the POST being parsed
    health = threading.Thread(target=lambda: answers.__setitem__("health", api.client.get("/healthz").status_code))
    health.start()
    health.join(60)
    got_health_first = "health" in answers and "post" not in answers
    release.set()
    post.join(60)
    assert got_health_first, answers
    assert answers == {"health": 200, "post": 201}


# ---- the error model in OpenAPI


def test_openapi_documents_the_one_error_body_the_api_sends(api: Api) -> None:
    from contract.schemas import ErrorBody

    doc = api.anon.get("/openapi.json").json()
    assert "HTTPValidationError" not in str(doc)
    assert set(doc["components"]["schemas"]["ErrorBody"]["properties"]) == {"detail", "errors", "error_count"}
    for path, ops in doc["paths"].items():
        if not path.startswith("/api/v1"):
            continue
        for method, op in ops.items():
            codes = set(op["responses"])
            assert {"401", "422", "503"} <= codes, (method, path, codes)
            if "{" in path:
                assert "404" in codes, (method, path)
            for code in codes - {"200", "201", "202", "204"}:
                ref = op["responses"][code]["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/ErrorBody", (method, path, code)
    assert "409" in doc["paths"]["/api/v1/runs/{run_id}/start"]["post"]["responses"]
    assert "403" not in doc["paths"]["/api/v1/runs"]["get"]["responses"]  # any token may read
    assert "403" in doc["paths"]["/api/v1/runs"]["post"]["responses"]

    run_id = api.create_run()["id"]
    answers = [api.anon.get(f"/api/v1/runs/{run_id}"),                                   # 401
               api.client.get("/api/v1/runs/999999"),                                    # 404
               api.act(run_id, "pause"),                                                 # 409
               api.client.post(f"/api/v1/runs/{run_id}/metrics", json={"points": [{}]}),  # 422
               api.client.post(f"/api/v1/runs/{run_id}/events", content=b"{", headers={"content-type": "application/json"}),
               api.client.get("/api/v1/runs", params={"limit": 0})]                      # 422 (query)
    assert [r.status_code for r in answers] == [401, 404, 409, 422, 422, 422]
    for r in answers:
        body = r.json()
        assert set(body) == {"detail", "errors", "error_count"}, body
        ErrorBody.model_validate(body)
        assert body["error_count"] >= len(body["errors"])

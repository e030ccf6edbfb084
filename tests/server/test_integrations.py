"""The API's trackers and alerts: points at ingestion, knobs, events and statuses by the pass, read back."""

from __future__ import annotations

from typing import Iterator

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.deps import get_dispatcher
from server.dispatch import RecordingDispatcher
from tests.integrations.conftest import Receiver
from tests.integrations.readers import mlflow_points, tensorboard_points
from tests.server.conftest import ADMIN, Api, make_settings


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
def app_api(db_url: str, backend: str, tmp_path) -> Iterator[Api]:
    # export_interval_s=0: no background pass; the test calls the pass itself (no timing in tests)
    settings = make_settings(tmp_path / "data", db_url, export_interval_s=0, dashboard_url="http://lab:8501")
    app = create_app(settings)
    dispatcher = RecordingDispatcher()
    app.dependency_overrides[get_dispatcher] = lambda: dispatcher
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        yield Api(client=client, anon=TestClient(app), dispatcher=dispatcher, db_url=db_url, backend=backend)


def test_a_run_exports_every_point_once_and_alerts(app_api: Api, receiver: Receiver, tmp_path) -> None:
    run = app_api.create_run(report_to=["mlflow", "tensorboard"],
                             alerts={"webhooks": [receiver.url], "rules": ["image:rollout/logp_gap > 0.5"]})
    rid = run["id"]
    hub = app_api.client.app.state.integrations
    assert app_api.act(rid, "start").status_code == 202
    assert app_api.report(rid, "running").status_code == 200
    points = [{"expert": e, "key": "loss/grpo", "step": s, "cycle": 1, "value": s / 10} for e in ("text", "image")
              for s in (1, 2, 3)]
    gap = [{"expert": "image", "key": "rollout/logp_gap", "step": 3, "cycle": 1, "value": 0.7}]
    url = f"/api/v1/runs/{rid}/metrics"
    assert app_api.client.post(url, json={"points": points[:4]}).status_code == 200
    assert app_api.client.post(url, json={"points": points + gap}).status_code == 200   # a retried batch
    r = app_api.client.patch(f"/api/v1/runs/{rid}/knobs", json={"expected_version": 0, "changes": {"beta": 0.25}})
    assert r.status_code == 200, r.text
    hub.poll()
    assert app_api.report(rid, "failed", "worker: CUDA out of memory").status_code == 200
    hub.poll()                                  # the status change: alert, and the tracker runs end
    hub.runs[rid].ri.exporter.close("failed")   # (already closing in the background; waits for it here)
    texts = receiver.wait_for(2)
    assert any("rollout/logp_gap = 0.7" in t and "rule image:rollout/logp_gap > 0.5" in t for t in texts), texts
    failed = [t for t in texts if " failed" in t]
    assert len(failed) == 1 and "CUDA out of memory" in failed[0] and f"http://lab:8501/run?run={rid}" in failed[0]

    want = {(f"{p['expert']}/{p['key']}", p["step"], round(p["value"], 5)) for p in points + gap}
    ml, tags, params = mlflow_points(f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}")
    assert all(n == 1 for n in ml.values()) and {(k, s, round(v, 5)) for k, s, v in ml} == want
    assert tags["knobs/v1"] == '{"beta": 0.25}' and tags["copd.status"] == "failed" and params["_status"] == "FAILED"
    events = [v for k, v in tags.items() if k.startswith("event/")]
    assert any("failed" in e and "CUDA out of memory" in e for e in events)
    tb, texts_tb = tensorboard_points(tmp_path / "data" / "tensorboard" / f"run-{rid}")
    assert all(n == 1 for n in tb.values()) and {(k, s, round(v, 5)) for k, s, v in tb} == want
    assert any(t.startswith("knobs: v1") for t in texts_tb)


def test_runs_without_integrations_cost_nothing(app_api: Api) -> None:
    run = app_api.running_run()
    hub = app_api.client.app.state.integrations
    r = app_api.client.post(f"/api/v1/runs/{run['id']}/metrics",
                            json={"points": [{"expert": "text", "key": "loss/grpo", "step": 1, "value": 1.0}]})
    assert r.status_code == 200
    hub.poll()
    assert hub.runs[run["id"]] is None and not (hub.root / f"run-{run['id']}").exists()


def test_a_bad_report_to_or_alert_is_a_422_naming_the_field(app_api: Api) -> None:
    r = app_api.client.post("/api/v1/runs", json={**_spec(), "report_to": ["neptune"]})
    assert r.status_code == 422 and "report_to" in r.text
    r = app_api.client.post("/api/v1/runs", json={**_spec(), "alerts": {"rules": ["acc_mean <"]}})
    assert r.status_code == 422 and "alerts.rules" in r.text


def _spec():
    from tests.server.conftest import spec

    return spec()

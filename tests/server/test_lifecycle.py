"""Lifecycle: every legal transition, every illegal one (409 naming the state), dispatch, worker reports."""

from __future__ import annotations

import pytest

from server import rules
from tests.server.conftest import Api

ALL = ("draft", "queued", "running", "paused", "completed", "failed", "cancelled", "crashed")


def run_in(api: Api, status: str) -> int:
    """A run brought to `status` through the API (crashed through the reaper)."""
    run_id = api.create_run()["id"]
    path = {"draft": [], "queued": ["start"], "running": ["start", "@running"], "paused": ["start", "@running", "pause"],
            "completed": ["start", "@running", "@completed"], "failed": ["start", "@running", "@failed"],
            "cancelled": ["cancel"], "crashed": ["start", "@running", "!crash"]}[status]
    for step in path:
        if step.startswith("@"):
            r = api.report(run_id, step[1:])
        elif step == "!crash":
            from datetime import timedelta

            from server.models import utcnow
            from server.reaper import reap_stale_runs

            beat = api.client.post(f"/api/v1/runs/{run_id}/heartbeats", json={"unit": "c1/rl/text", "worker": "w"})
            assert beat.status_code == 200, beat.text  # a unit in flight that then goes silent
            with api.client.app.state.sessions() as s:
                assert reap_stale_runs(s, utcnow() + timedelta(seconds=100), 10) == [run_id]
            continue
        else:
            r = api.act(run_id, step)
        assert r.status_code in (200, 202), r.text
    assert api.client.get(f"/api/v1/runs/{run_id}").json()["status"] == status
    return run_id


CASES = [(action, frm) for action in rules.ACTIONS for frm in ALL]


@pytest.mark.parametrize("action, frm", CASES)
def test_user_actions(api: Api, action: str, frm: str) -> None:
    run_id = run_in(api, frm)
    api.dispatcher.sent.clear()
    r = api.act(run_id, action)
    rule = rules.ACTIONS[action]
    if frm in rule.allowed_from:
        assert r.status_code == 202, r.text
        assert r.json()["status"] == rule.to and r.json()["id"] == run_id
        expected = [("copd.advance", {"run_id": run_id})] if rule.dispatch else []
        assert api.dispatcher.sent == expected
    else:
        assert r.status_code == 409, r.text
        assert f"is {frm}" in r.json()["detail"]
        assert api.dispatcher.sent == []
        assert api.client.get(f"/api/v1/runs/{run_id}").json()["status"] == frm


@pytest.mark.parametrize("report, frm", [(rep, frm) for rep in rules.WORKER_REPORTS for frm in ALL])
def test_worker_reports(api: Api, report: str, frm: str) -> None:
    run_id = run_in(api, frm)
    r = api.report(run_id, report, message="from the test")
    if frm in rules.WORKER_REPORTS[report].allowed_from:
        assert r.status_code == 200, r.text
        assert r.json()["status"] == report
    else:
        assert r.status_code == 409 and f"is {frm}" in r.json()["detail"]


def test_timestamps_and_progress(api: Api) -> None:
    run_id = run_in(api, "running")
    run = api.client.get(f"/api/v1/runs/{run_id}").json()
    assert run["started_at"] and run["finished_at"] is None
    run = api.report(run_id, "completed").json()
    assert run["finished_at"] and run["progress"] == 1.0


def test_lifecycle_changes_are_events(api: Api) -> None:
    run_id = run_in(api, "paused")
    messages = [e["message"] for e in api.client.get(f"/api/v1/runs/{run_id}/events").json()["items"]]
    assert any("draft → queued" in m for m in messages)
    assert any("queued → running" in m for m in messages)
    assert any("running → paused" in m for m in messages)


def test_dispatch_failure_puts_the_run_back(api: Api) -> None:
    run_id = api.create_run()["id"]
    api.dispatcher.fail = True
    r = api.act(run_id, "start")
    assert r.status_code == 503 and r.json()["detail"].startswith("dispatch")
    assert api.client.get(f"/api/v1/runs/{run_id}").json()["status"] == "draft"
    api.dispatcher.fail = False
    assert api.act(run_id, "start").status_code == 202


def test_unknown_run_and_bad_reports(api: Api) -> None:
    assert api.act(999999, "start").status_code == 404
    run_id = api.create_run()["id"]
    r = api.client.post(f"/api/v1/runs/{run_id}/status", json={"status": "crashed"})
    assert r.status_code == 422 and r.json()["detail"].startswith("status")
    r = api.client.post(f"/api/v1/runs/{run_id}/status", json={"status": "running", "extra": 1})
    assert r.status_code == 422 and r.json()["detail"].startswith("extra")


def test_progress_reports(api: Api) -> None:
    run_id = run_in(api, "running")
    r = api.client.post(f"/api/v1/runs/{run_id}/progress",
                        json={"cycle": 2, "phase": "opd", "expert": "text", "unit": "c2/opd/text"})
    assert r.status_code == 200, r.text
    run = r.json()
    assert run["cycle"] == 2 and run["phase"] == "opd" and run["progress"] == 0.5
    assert run["experts"][0] == {"name": "text", "domain": "builtin:arith", "status": "running", "unit": "c2/opd/text"}
    r = api.client.post(f"/api/v1/runs/{run_id}/progress", json={"cycle": 2, "phase": "opd", "progress": 0.6})
    assert r.json()["progress"] == 0.6
    for body, field in [({"cycle": 9, "phase": "rl"}, "cycle"), ({"cycle": 1, "phase": "../x"}, "phase"),
                        ({"cycle": 1, "phase": "rl", "expert": "nobody"}, "expert"),
                        ({"cycle": 1, "phase": "rl", "unit": "c1/rl/../../x"}, "unit"),
                        ({"cycle": 1, "phase": "rl", "progress": 1.5}, "progress")]:
        r = api.client.post(f"/api/v1/runs/{run_id}/progress", json=body)
        assert r.status_code == 422 and r.json()["detail"].startswith(field), (body, r.json())
    done = run_in(api, "completed")
    r = api.client.post(f"/api/v1/runs/{done}/progress", json={"cycle": 1, "phase": "rl"})
    assert r.status_code == 409 and "completed" in r.json()["detail"]

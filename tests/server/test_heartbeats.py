"""Heartbeats and the reaper: a running run that falls silent is crashed, with an event naming the unit."""

from __future__ import annotations

from datetime import timedelta

from server.models import utcnow
from server.reaper import reap_stale_runs
from tests.server.conftest import Api

TIMEOUT = 60.0


def _reap(api: Api, after_s: float) -> list[int]:
    with api.client.app.state.sessions() as session:
        return reap_stale_runs(session, utcnow() + timedelta(seconds=after_s), TIMEOUT)


def _beat(api: Api, run_id: int, unit: str, worker: str = "host-123"):
    return api.client.post(f"/api/v1/runs/{run_id}/heartbeats", json={"unit": unit, "worker": worker})


def test_heartbeat_is_recorded_with_the_run_status(api: Api) -> None:
    run_id = api.running_run()["id"]
    r = _beat(api, run_id, "c1/rl/text")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["unit"] == "c1/rl/text" and body["worker"] == "host-123" and body["run_status"] == "running"
    assert body["last_seen"]
    assert _beat(api, run_id, "c1/rl/text", worker="host-456").json()["worker"] == "host-456"  # upsert


def test_silent_run_is_crashed_with_an_event_naming_the_unit(api: Api) -> None:
    run_id = api.running_run()["id"]
    _beat(api, run_id, "c1/rl/image")
    assert _beat(api, run_id, "c1/rl/text").status_code == 200
    assert _reap(api, TIMEOUT / 2) == []  # not silent long enough
    assert api.client.get(f"/api/v1/runs/{run_id}").json()["status"] == "running"
    assert _reap(api, TIMEOUT + 5) == [run_id]
    assert api.client.get(f"/api/v1/runs/{run_id}").json()["status"] == "crashed"
    events = api.client.get(f"/api/v1/runs/{run_id}/events", params={"level": "error"}).json()["items"]
    assert len(events) == 1
    assert "running → crashed" in events[0]["message"] and "c1/rl/text" in events[0]["message"]
    assert "host-123" in events[0]["message"]
    assert _reap(api, TIMEOUT + 5) == []  # already crashed
    # a crashed run resumes (from its last checkpoint) and refuses heartbeats until it runs again
    assert _beat(api, run_id, "c1/rl/text").status_code == 409
    assert api.act(run_id, "resume").json()["status"] == "queued"


def test_run_waiting_for_its_units_is_not_crashed(api: Api) -> None:
    # no unit in flight: never started one, or the last one said it was done (the next waits in the queue)
    waiting = api.running_run()["id"]
    finished = api.running_run()["id"]
    _beat(api, finished, "c1/rl/text")
    r = api.client.post(f"/api/v1/runs/{finished}/heartbeats", json={"unit": "c1/rl/text", "worker": "host-123",
                                                                      "done": True})
    assert r.status_code == 200, r.text
    assert _reap(api, TIMEOUT + 5) == []
    assert api.client.get(f"/api/v1/runs/{waiting}").json()["status"] == "running"
    # a unit that starts and then goes silent is a crash
    _beat(api, finished, "c1/opd/text")
    assert _reap(api, TIMEOUT + 5) == [finished]


def test_only_running_runs_are_reaped(api: Api) -> None:
    queued = api.create_run()["id"]
    api.act(queued, "start")
    paused = api.running_run()["id"]
    api.act(paused, "pause")
    draft = api.create_run()["id"]
    assert _reap(api, 10 * TIMEOUT) == []
    for run_id, status in ((queued, "queued"), (paused, "paused"), (draft, "draft")):
        assert api.client.get(f"/api/v1/runs/{run_id}").json()["status"] == status


def test_fresh_heartbeat_keeps_a_run_alive(api: Api) -> None:
    run_id = api.running_run()["id"]
    with api.client.app.state.sessions() as session:  # the run started running long ago...
        from sqlalchemy import update

        from server.models import Run

        session.execute(update(Run).where(Run.id == run_id).values(status_changed_at=utcnow() - timedelta(hours=1)))
        session.commit()
    _beat(api, run_id, "c2/opd/video")  # ...but a unit spoke just now
    with api.client.app.state.sessions() as session:
        assert reap_stale_runs(session, utcnow(), TIMEOUT) == []


def test_bad_heartbeats(api: Api) -> None:
    run_id = api.running_run()["id"]
    for body, field in [({"unit": "../../etc", "worker": "w"}, "unit"), ({"unit": "c1/rl/text", "worker": ""}, "worker"),
                        ({"unit": "c1/rl/text"}, "worker"), ({"unit": "rl/text", "worker": "w"}, "unit")]:
        r = api.client.post(f"/api/v1/runs/{run_id}/heartbeats", json=body)
        assert r.status_code == 422 and r.json()["detail"].startswith(field), (body, r.json())
    assert _beat(api, 999999, "c1/rl/text").status_code == 404
    done = api.running_run()["id"]
    api.act(done, "cancel")
    r = _beat(api, done, "c1/rl/text")
    assert r.status_code == 409 and "cancelled" in r.json()["detail"]


def test_watchdog_resends_a_stalled_runs_next_phase_then_crashes_it(api: Api) -> None:
    """A run with no unit in flight and nothing queued lost a message (a Redis restart): re-sent once, then
    crashed with an event saying how to resume."""
    from server.reaper import Watchdog

    dog = Watchdog(stall_s=30)
    run_id = api.running_run()["id"]
    waiting = api.running_run()["id"]
    now = utcnow()

    def check(after_s: float):
        with api.client.app.state.sessions() as session:
            return dog.check(session, now + timedelta(seconds=after_s), api.dispatcher)

    api.dispatcher.sent.clear()
    assert check(0) == []
    assert _beat(api, waiting, "c1/rl/text").status_code == 200  # this one has a unit in flight
    assert check(31) == [(run_id, "resent")]
    assert api.dispatcher.sent == [("copd.advance", {"run_id": run_id})]
    events = api.client.get(f"/api/v1/runs/{run_id}/events", params={"level": "warning"}).json()["items"]
    assert events[-1]["message"].startswith("watchdog: no unit in flight for 31 s and nothing queued")
    assert check(45) == []  # the clock started again at the re-send
    api.dispatcher.queued = 3  # work waits in the queues (maybe this run's): not stalled
    assert check(70) == []
    api.dispatcher.queued = None  # the broker cannot say: do nothing
    assert check(70) == []
    api.dispatcher.queued = 0
    assert check(70) == [(run_id, "crashed")]
    run = api.client.get(f"/api/v1/runs/{run_id}").json()
    assert run["status"] == "crashed"
    events = api.client.get(f"/api/v1/runs/{run_id}/events", params={"level": "error"}).json()["items"]
    assert "even after re-sending" in events[-1]["message"] and f"copd runs resume {run_id}" in events[-1]["message"]
    assert api.client.get(f"/api/v1/runs/{waiting}").json()["status"] == "running"
    assert api.act(run_id, "resume").status_code == 202


def test_watchdog_forgets_a_run_whose_units_run_again(api: Api) -> None:
    from server.reaper import Watchdog

    dog = Watchdog(stall_s=30)
    run_id = api.running_run()["id"]
    now = utcnow()

    def check(after_s: float):
        with api.client.app.state.sessions() as session:
            return dog.check(session, now + timedelta(seconds=after_s), api.dispatcher)

    assert check(0) == []
    assert _beat(api, run_id, "c1/rl/text").status_code == 200
    assert check(20) == []  # in flight: its idle clock is dropped
    api.client.post(f"/api/v1/runs/{run_id}/heartbeats", json={"unit": "c1/rl/text", "worker": "w", "done": True})
    assert check(25) == []  # idle again from now
    assert check(50) == []
    assert check(56) == [(run_id, "resent")]

"""How the worker treats faults, without processes: a full disk makes the run resumable with an event that
says what to do and the true progress; an API that stays unavailable (0, 502-504) is waited for."""

from __future__ import annotations

import errno
from types import SimpleNamespace

import pytest

from contract.client import ApiError
from trainer.diskspace import DiskFull
from worker import tasks, unit


class FakeApi:
    """Records the worker's reports."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []

    def get_run(self, run_id):
        return SimpleNamespace(schedule=SimpleNamespace(cycles=2))

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
        return call


@pytest.mark.parametrize("err", [DiskFull("/data/runs/7/checkpoints/text/c1-rl"),
                                 OSError(errno.ENOSPC, "No space left on device", "/data/runs/7/units/x.done")])
def test_a_full_disk_crashes_the_run_resumably_with_the_true_progress(monkeypatch, err) -> None:
    monkeypatch.setattr(unit, "_done_share", lambda api, run_id: 0.25)
    api = FakeApi()
    unit.report_failure(api, 7, "c1/rl/text", err)
    calls = {name: (args, kwargs) for name, args, kwargs in api.calls}
    progress = calls["report_progress"][1]
    assert progress["progress"] == 0.25 and progress["expert_status"] == "failed" and progress["cycle"] == 1
    event = calls["post_event"][0][1]
    assert "no space left on device at /data/runs/7/" in event and "copd runs resume 7" in event
    args, kwargs = calls["report_status"]
    assert args == (7, "failed") and kwargs["resumable"] is True


def test_other_failures_fail_the_run(monkeypatch) -> None:
    monkeypatch.setattr(unit, "_done_share", lambda api, run_id: 0.5)
    api = FakeApi()
    unit.report_failure(api, 7, "c1/eval", ValueError("bad domain"))
    calls = {name: (args, kwargs) for name, args, kwargs in api.calls}
    assert calls["report_progress"][1]["progress"] == 0.5 and calls["report_progress"][1]["expert"] is None
    assert calls["report_status"][1]["resumable"] is False
    assert "c1/eval failed: ValueError: bad domain" in calls["post_event"][0][1]


@pytest.mark.parametrize("status", [0, 502, 503, 504])
def test_an_unavailable_api_requeues_the_unit_instead_of_failing_the_run(monkeypatch, status) -> None:
    from celery.exceptions import Reject

    def unavailable(*a, **k):
        raise ApiError(status, "database: unavailable")

    failures = []
    monkeypatch.setattr(tasks, "execute_unit", unavailable)
    monkeypatch.setattr(tasks, "report_failure", lambda *a: failures.append(a))
    monkeypatch.setattr(tasks, "API_DOWN_WAIT_S", 0)
    monkeypatch.setattr(tasks, "_api", lambda: FakeApi())
    tasks._local.cfg = None
    with pytest.raises(Reject):
        tasks.run_unit.run(7, "c1/rl/text")
    assert failures == []


@pytest.mark.parametrize("broker", ["embedded", "redis"])
def test_the_servers_dispatcher_counts_queued_work(tmp_path, request, broker) -> None:
    """The watchdog's `pending()`: 0 with empty (or never declared) queues, the count once work is sent,
    None when the broker is down."""
    from contract.settings import Settings
    from server.dispatch import CeleryDispatcher
    from tests.services import free_port

    url = request.getfixturevalue("redis_url") if broker == "redis" else None
    d = CeleryDispatcher(Settings(data_dir=tmp_path, broker_url=url))
    assert d.pending() == 0
    d.send("copd.advance", run_id=1)
    d.send("copd.run_unit", run_id=1, unit_id="c1/rl/text")
    assert d.pending() == 2
    down = CeleryDispatcher(Settings(data_dir=tmp_path, broker_url=f"redis://127.0.0.1:{free_port()}/0"))
    assert down.pending() is None


def test_a_resent_status_report_that_had_landed_is_not_an_error() -> None:
    """503 (the first send's answer lost), then 409 for the resend: the run is already where the report
    wanted it, so the report succeeded. A 409 for a first send stays an error."""
    import httpx

    from contract.client import Client
    from contract.spec import RunSpec
    from tests.server.conftest import SPEC

    spec = RunSpec.model_validate(SPEC).model_dump(mode="json")
    run = {**spec, "experts": [{**e, "status": "pending", "unit": None} for e in spec["experts"]], "id": 7,
           "status": "running", "cycle": 0, "phase": None, "progress": 0.0, "created_at": "2026-01-01T00:00:00Z",
           "started_at": None, "finished_at": None, "parent_run_id": None, "parent_checkpoint_id": None}
    answers = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=run)
        answers.append(request.url.path)
        if len(answers) == 1:
            return httpx.Response(503, json={"detail": "database: unavailable", "errors": []})
        return httpx.Response(409, json={"detail": "run 7 is running; running needs it queued", "errors": []})

    with Client("http://api", "tok", retry_s=30, transport=httpx.MockTransport(handler)) as api:
        assert api.report_status(7, "running").status == "running"
        assert len(answers) == 2
        answers.clear()
        answers.append("first")  # the next send is answered 409 at once
        with pytest.raises(ApiError) as err:
            api.report_status(7, "running")
        assert err.value.status == 409

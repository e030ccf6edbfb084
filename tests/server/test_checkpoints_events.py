"""Checkpoints (register, idempotent re-register, list, final) and events (append, tail with after_id)."""

from __future__ import annotations

import pytest

from tests.server.conftest import Api

SHA = "0123456789abcdef" * 4


def _ckpt(expert: str = "text", cycle: int = 1, step: int = 5, **kw) -> dict:
    return {"expert": expert, "cycle": cycle, "step": step, "uri": f"file:///data/ckpt/{expert}/c{cycle}",
            "sha256": SHA, "bytes": 2048, "metrics": {"acc/text": 0.25}} | kw


def test_register_list_and_mark_final(api: Api) -> None:
    run_id = api.create_run()["id"]
    url = f"/api/v1/runs/{run_id}/checkpoints"
    r = api.client.post(url, json=_ckpt())
    assert r.status_code == 201, r.text
    first = r.json()
    assert {k: first[k] for k in ("expert", "cycle", "step", "uri", "sha256", "bytes", "final", "metrics")} == {
        "expert": "text", "cycle": 1, "step": 5, "uri": "file:///data/ckpt/text/c1", "sha256": SHA,
        "bytes": 2048, "final": False, "metrics": {"acc/text": 0.25}}
    assert first["id"] and first["created_at"]
    again = api.client.post(url, json=_ckpt(bytes=4096))  # a retried unit re-registers: same record, updated
    assert again.status_code == 200 and again.json()["id"] == first["id"] and again.json()["bytes"] == 4096
    second = api.client.post(url, json=_ckpt(cycle=2, step=10)).json()
    merged = api.client.post(url, json=_ckpt(expert="merged", cycle=4, step=20)).json()
    listing = api.client.get(url).json()
    assert listing["total"] == 3 and [c["id"] for c in listing["items"]] == [first["id"], second["id"], merged["id"]]
    assert api.client.get(url, params={"expert": "merged"}).json()["total"] == 1
    page = api.client.get(url, params={"limit": 1, "offset": 1}).json()
    assert page["total"] == 3 and [c["id"] for c in page["items"]] == [second["id"]]
    r = api.client.post(f"{url}/{first['id']}/final")
    assert r.status_code == 200 and r.json()["final"] is True
    r = api.client.post(f"{url}/{second['id']}/final")  # one final per expert
    assert r.json()["final"] is True
    finals = api.client.get(url, params={"final": "true"}).json()["items"]
    assert [c["id"] for c in finals] == [second["id"]]
    assert api.client.get(f"{url}/{first['id']}").json()["final"] is False


@pytest.mark.parametrize("change, field", [
    ({"expert": "audio"}, "expert"), ({"expert": "../x"}, "expert"), ({"cycle": -1}, "cycle"),
    ({"step": -1}, "step"), ({"bytes": -1}, "bytes"), ({"sha256": "xyz"}, "sha256"),
    ({"uri": "/data/../../etc/passwd"}, "uri"), ({"uri": ""}, "uri"), ({"metrics": {"acc": "high"}}, "metrics.acc"),
    ({"extra": True}, "extra"),
])
def test_bad_checkpoints_are_422(api: Api, change: dict, field: str) -> None:
    run_id = api.create_run()["id"]
    r = api.client.post(f"/api/v1/runs/{run_id}/checkpoints", json=_ckpt(**change))
    assert r.status_code == 422 and r.json()["detail"].startswith(field), r.json()
    assert api.client.get(f"/api/v1/runs/{run_id}/checkpoints").json()["total"] == 0


def test_checkpoint_ids_belong_to_their_run(api: Api) -> None:
    a, b = api.create_run()["id"], api.create_run()["id"]
    ckpt = api.client.post(f"/api/v1/runs/{a}/checkpoints", json=_ckpt()).json()
    assert api.client.get(f"/api/v1/runs/{b}/checkpoints/{ckpt['id']}").status_code == 404
    assert api.client.post(f"/api/v1/runs/{b}/checkpoints/{ckpt['id']}/final").status_code == 404
    assert api.client.get(f"/api/v1/runs/{a}/checkpoints/999999").status_code == 404
    assert api.client.get("/api/v1/runs/999999/checkpoints").status_code == 404


def test_events_append_and_tail(api: Api) -> None:
    run_id = api.create_run()["id"]  # creation is itself an event
    url = f"/api/v1/runs/{run_id}/events"
    r = api.client.post(url, json={"level": "warning", "expert": "text", "message": "loss spiked"})
    assert r.status_code == 201, r.text
    ev = r.json()
    assert set(ev) == {"id", "time", "level", "expert", "message"}
    assert ev["level"] == "warning" and ev["expert"] == "text" and ev["message"] == "loss spiked"
    api.client.post(url, json={"message": "plain"})
    everything = api.client.get(url).json()
    assert everything["total"] == 3 and everything["items"][0]["message"].startswith("created")
    tail = api.client.get(url, params={"after_id": ev["id"]}).json()
    assert [e["message"] for e in tail["items"]] == ["plain"] and tail["total"] == 1
    first = api.client.get(url, params={"limit": 1}).json()
    assert len(first["items"]) == 1 and first["total"] == 3
    warnings = api.client.get(url, params={"level": "warning"}).json()
    assert [e["id"] for e in warnings["items"]] == [ev["id"]]


@pytest.mark.parametrize("body, field", [
    ({"message": ""}, "message"), ({"level": "fatal", "message": "x"}, "level"),
    ({"message": "x", "expert": "a/b"}, "expert"), ({"message": 5}, "message"), ({}, "message"),
])
def test_bad_events_are_422(api: Api, body: dict, field: str) -> None:
    run_id = api.create_run()["id"]
    r = api.client.post(f"/api/v1/runs/{run_id}/events", json=body)
    assert r.status_code == 422 and r.json()["detail"].startswith(field), r.json()

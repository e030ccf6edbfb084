"""Unit markers and leases (worker hosts without a shared disk), and checkpoints marked deleted by retention."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.server.conftest import Api

SHA = "0123456789abcdef" * 4


def test_markers_put_replace_claim_and_list(api: Api) -> None:
    run_id = api.create_run()["id"]
    url = f"/api/v1/runs/{run_id}/markers"
    r = api.client.post(url, json={"kind": "done", "name": "c1/rl/text", "body": {"worker": "a"}})
    assert r.status_code == 201, r.text
    r = api.client.post(url, json={"kind": "done", "name": "c1/rl/text", "body": {"worker": "b"}})
    assert r.status_code == 200 and r.json()["body"] == {"worker": "b"}  # a unit run again replaces its marker
    claim = {"kind": "sent", "name": "c1/opd", "body": {"by": "join-1"}, "exclusive": True}
    assert api.client.post(url, json=claim).status_code == 201
    r = api.client.post(url, json=claim | {"body": {"by": "join-2"}})
    assert r.status_code == 409 and "join-1" in r.json()["detail"]  # the second join sends nothing
    items = api.client.get(url).json()["items"]
    assert [(m["kind"], m["name"], m["body"]) for m in items] == [
        ("done", "c1/rl/text", {"worker": "b"}), ("sent", "c1/opd", {"by": "join-1"})]
    assert [m["name"] for m in api.client.get(url, params={"kind": "sent"}).json()["items"]] == ["c1/opd"]


@pytest.mark.parametrize("body, field", [
    ({"kind": "lock", "name": "c1/rl/text"}, "kind"),
    ({"kind": "done", "name": ""}, "name"),
    ({"kind": "done", "name": "c1 rl"}, "name"),
])
def test_bad_markers_are_422_naming_the_field(api: Api, body: dict, field: str) -> None:
    run_id = api.create_run()["id"]
    r = api.client.post(f"/api/v1/runs/{run_id}/markers", json=body)
    assert r.status_code == 422 and field in r.text
    assert api.client.post("/api/v1/runs/999999/markers", json={"kind": "done", "name": "x"}).status_code == 404


def test_lease_is_held_while_the_holder_beats_and_taken_over_after(api: Api) -> None:
    run = api.running_run()
    url = f"/api/v1/runs/{run['id']}/leases"
    first = api.client.post(url, json={"unit": "c1/rl/text", "worker": "host-a", "ttl_s": 3600})
    assert first.status_code == 200 and first.json()["granted"] is True
    other = api.client.post(url, json={"unit": "c1/rl/text", "worker": "host-b", "ttl_s": 3600}).json()
    assert other["granted"] is False and other["holder"] == "host-a"
    assert api.client.post(url, json={"unit": "c1/rl/text", "worker": "host-a", "ttl_s": 3600}).json()["granted"]
    # host-a goes silent: its last beat is an hour old, older than host-b's ttl
    with api.client.app.state.engine.begin() as conn:
        conn.execute(text("UPDATE heartbeats SET last_seen = :t"), {"t": "2000-01-01 00:00:00"})
    took = api.client.post(url, json={"unit": "c1/rl/text", "worker": "host-b", "ttl_s": 60}).json()
    assert took["granted"] is True and took["holder"] == "host-b"
    # the holder's last (done) heartbeat releases the lease at once
    api.client.post(f"/api/v1/runs/{run['id']}/heartbeats", json={"unit": "c1/rl/text", "worker": "host-b",
                                                                  "done": True})
    assert api.client.post(url, json={"unit": "c1/rl/text", "worker": "host-a", "ttl_s": 3600}).json()["granted"]


def test_checkpoint_marked_deleted_stays_listed_with_deleted_at(api: Api) -> None:
    run_id = api.create_run()["id"]
    url = f"/api/v1/runs/{run_id}/checkpoints"
    body = {"expert": "text", "cycle": 1, "step": 5, "uri": "s3://bucket/runs/1/checkpoints/text/c1-rl",
            "sha256": SHA, "bytes": 10, "optimizer": True}
    ckpt = api.client.post(url, json=body).json()
    assert ckpt["optimizer"] is True and ckpt["deleted_at"] is None
    final = api.client.post(url, json=body | {"expert": "merged", "cycle": 4, "step": 20, "final": True}).json()
    r = api.client.post(f"{url}/{ckpt['id']}/deleted", json={"reason": "retention"})
    assert r.status_code == 200 and r.json()["deleted_at"] is not None
    again = api.client.post(f"{url}/{ckpt['id']}/deleted", json={}).json()
    assert again["deleted_at"] == r.json()["deleted_at"]  # idempotent
    assert api.client.post(f"{url}/{final['id']}/deleted", json={}).status_code == 409  # finals are kept
    assert [c["id"] for c in api.client.get(url, params={"deleted": "true"}).json()["items"]] == [ckpt["id"]]
    assert [c["id"] for c in api.client.get(url, params={"deleted": "false"}).json()["items"]] == [final["id"]]
    events = [e["message"] for e in api.client.get(f"/api/v1/runs/{run_id}/events").json()["items"]]
    assert any("deleted (retention)" in m for m in events)
    # written again (a unit that ran again): kept once more; an update without `optimizer` keeps the old value
    back = api.client.post(url, json={k: v for k, v in body.items() if k != "optimizer"}).json()
    assert back["deleted_at"] is None and back["optimizer"] is True

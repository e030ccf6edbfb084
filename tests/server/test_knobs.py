"""Knobs: version 0 from the spec, optimistic versioning, range checks naming the field, applied recording."""

from __future__ import annotations

import pytest

from tests.server.conftest import Api


def test_version_zero_is_the_specs_knobs(api: Api) -> None:
    run = api.create_run(opd={"beta": 0.7}, grpo={"lr": 0.001})
    knobs = api.client.get(f"/api/v1/runs/{run['id']}/knobs").json()
    assert knobs["version"] == 0
    assert knobs["values"] == {
        "beta": 0.7, "rl_steps": 3, "opd_steps": 2, "lr": 0.001,
        "teacher_weights": {"text": {"image": 1.0, "video": 1.0}, "image": {"text": 1.0, "video": 1.0},
                            "video": {"text": 1.0, "image": 1.0}}}
    assert len(knobs["history"]) == 1
    entry = knobs["history"][0]
    assert entry["version"] == 0 and entry["changes"] == {} and entry["author"] == "admin" and entry["applied"] is None


def test_patch_saves_a_new_version_and_stale_is_409(api: Api) -> None:
    run_id = api.create_run()["id"]
    url = f"/api/v1/runs/{run_id}/knobs"
    r = api.client.patch(url, json={"expected_version": 0, "changes": {"beta": {"text": 0.5}, "rl_steps": 4}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == 1 and body["values"]["beta"] == {"text": 0.5} and body["values"]["rl_steps"] == 4
    assert body["history"][1]["changes"] == {"beta": {"text": 0.5}, "rl_steps": 4}
    assert body["history"][1]["author"] == "admin" and body["history"][1]["created_at"]
    assert api.client.get(url).json() == body  # same shape as GET
    r = api.client.patch(url, json={"expected_version": 0, "changes": {"lr": 0.01}})
    assert r.status_code == 409 and "version 1" in r.json()["detail"]
    r = api.client.patch(url, json={"expected_version": 1, "changes": {"teacher_weights": {"text": {"image": 0.0}}}})
    assert r.status_code == 200
    values = r.json()["values"]
    assert values["teacher_weights"]["text"] == {"image": 0.0, "video": 1.0}  # one weight changed, others kept
    assert values["beta"] == {"text": 0.5} and values["rl_steps"] == 4


@pytest.mark.parametrize("changes, field", [
    ({"beta": -0.1}, "changes.beta"),
    ({"beta": {"text": -1}}, "changes.beta.text"),
    ({"beta": {"audio": 1.0}}, "changes.beta.audio: unknown expert"),
    ({"rl_steps": -1}, "changes.rl_steps"),
    ({"opd_steps": -2}, "changes.opd_steps"),
    ({"lr": 0}, "changes.lr"),
    ({"lr": -1e-4}, "changes.lr"),
    ({"teacher_weights": {"text": {"image": -1}}}, "changes.teacher_weights.text.image"),
    ({"teacher_weights": {"audio": {"image": 1}}}, "changes.teacher_weights.audio: unknown expert"),
    ({"teacher_weights": {"text": {"audio": 1}}}, "changes.teacher_weights.text.audio: unknown expert"),
    ({"temperature": 2}, "changes.temperature"),
    ({"beta": None}, "changes.beta"),
    ({"rl_steps": "many"}, "changes.rl_steps"),
    ({}, "changes"),
])
def test_out_of_range_is_422_naming_the_field(api: Api, changes: dict, field: str) -> None:
    run_id = api.create_run()["id"]
    r = api.client.patch(f"/api/v1/runs/{run_id}/knobs", json={"expected_version": 0, "changes": changes})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(field), r.json()
    assert api.client.get(f"/api/v1/runs/{run_id}/knobs").json()["version"] == 0


def test_bad_patch_bodies(api: Api) -> None:
    run_id = api.create_run()["id"]
    url = f"/api/v1/runs/{run_id}/knobs"
    assert api.client.patch(url, json={"changes": {"lr": 0.1}}).json()["detail"].startswith("expected_version")
    assert api.client.patch(url, json={"expected_version": -1, "changes": {"lr": 0.1}}).status_code == 422
    assert api.client.patch(url, json={"expected_version": 0, "changes": [1]}).json()["detail"].startswith("changes")
    assert api.client.patch("/api/v1/runs/999999/knobs", json={"expected_version": 0, "changes": {"lr": 0.1}}).status_code == 404
    assert api.client.get("/api/v1/runs/999999/knobs").status_code == 404


def test_knobs_frozen_once_the_run_is_over(api: Api) -> None:
    run_id = api.create_run()["id"]
    api.act(run_id, "cancel")
    r = api.client.patch(f"/api/v1/runs/{run_id}/knobs", json={"expected_version": 0, "changes": {"lr": 0.1}})
    assert r.status_code == 409 and "cancelled" in r.json()["detail"]


def test_applied_is_recorded_once(api: Api) -> None:
    run_id = api.create_run()["id"]
    api.client.patch(f"/api/v1/runs/{run_id}/knobs", json={"expected_version": 0, "changes": {"lr": 0.01}})
    url = f"/api/v1/runs/{run_id}/knobs/1/applied"
    r = api.client.post(url, json={"cycle": 2, "step": 7})
    assert r.status_code == 200, r.text
    applied = r.json()["history"][1]["applied"]
    assert applied["cycle"] == 2 and applied["step"] == 7 and applied["at"]
    again = api.client.post(url, json={"cycle": 3, "step": 9}).json()["history"][1]["applied"]
    assert again == applied  # the first application wins
    assert r.json()["history"][0]["applied"] is None
    assert api.client.post(f"/api/v1/runs/{run_id}/knobs/5/applied", json={"cycle": 1, "step": 1}).status_code == 404
    r = api.client.post(url, json={"cycle": -1, "step": 1})
    assert r.status_code == 422 and r.json()["detail"].startswith("cycle")

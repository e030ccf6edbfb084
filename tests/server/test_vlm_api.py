"""Visual domains through the REST API: the spec fields are validated torch-free (422 naming the field)."""

from __future__ import annotations

import pytest

from tests.server.conftest import SPEC, Api, spec

VISUAL = [{"name": "text", "domain": "builtin:arith"}, {"name": "image", "domain": "builtin:shapes"},
          {"name": "video", "domain": "builtin:motion"}]


def test_visual_run_round_trips(api: Api) -> None:
    r = api.client.post("/api/v1/runs", json=spec(base_model="builtin:tiny-vl", experts=VISUAL))
    assert r.status_code == 201, r.text
    assert [e["domain"] for e in r.json()["experts"]] == ["builtin:arith", "builtin:shapes", "builtin:motion"]


@pytest.mark.parametrize("change, field", [
    ({"experts": VISUAL}, "experts.1.domain"),  # builtin:tiny has no vision tower
    ({"base_model": "some/vlm", "experts": SPEC["experts"][:2] + [
        {"name": "mine", "domain": {"type": "jsonl", "path": "d.jsonl", "image_field": "a", "video_field": "b"}}]},
     "experts.2.domain.video_field"),
    ({"base_model": "some/vlm", "experts": SPEC["experts"][:2] + [
        {"name": "mine", "domain": {"type": "dataset", "path": "d.parquet", "image_field": "prompt"}}]},
     "experts.2.domain.image_field"),
    ({"base_model": "some/vlm", "experts": SPEC["experts"][:2] + [
        {"name": "mine", "domain": {"type": "jsonl", "path": "d.jsonl", "image_field": ""}}]},
     "experts.2.domain.image_field"),
    ({"base_model": "some/vlm", "experts": SPEC["experts"][:2] + [
        {"name": "mine", "domain": {"type": "jsonl", "path": "d.jsonl", "video_field": "v", "video_frames": 0}}]},
     "experts.2.domain.video_frames"),
])
def test_bad_visual_spec_is_422_naming_the_field(api: Api, change: dict, field: str) -> None:
    r = api.client.post("/api/v1/runs", json=spec(**change))
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(field), r.json()
    assert api.client.get("/api/v1/runs").json()["total"] == 0

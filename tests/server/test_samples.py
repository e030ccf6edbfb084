"""Sample prompts: POST (write role) upserts a cycle's prompts, merging answers by model; GET (read role) shows
the latest cycle (or the one asked); oversize or malformed thumbnails and too many prompts are 4xx naming the field."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from contract.schemas import MAX_SAMPLES, MAX_THUMB_PX
from tests.server.conftest import Api


def thumb(w: int = 56, h: int = 56, colour: str = "red") -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def sample(domain: str = "image", index: int = 0, answers=(("image", "2", 1.0),), images=None) -> dict:
    return {"domain": domain, "index": index, "prompt": f"r? #{index}", "reference": "2",
            "images": [thumb()] if images is None else images,
            "answers": [{"model": m, "answer": a, "score": s, "correct": s == 1.0} for m, a, s in answers]}


def test_post_then_get_latest_cycle_and_merge_answers(api: Api) -> None:
    run_id = api.create_run()["id"]
    url = f"/api/v1/runs/{run_id}/samples"
    assert api.client.get(url).json() == {"cycle": None, "cycles": [], "samples": []}
    c0 = [sample("image", 0, [("text", "1", 0.0), ("image", "1", 0.0)]), sample("text", 3, images=[])]
    r = api.client.post(url, json={"cycle": 0, "samples": c0})
    assert r.status_code == 200 and r.json() == {"samples": 2}, r.text
    r = api.client.post(url, json={"cycle": 1, "samples": [sample("image", 0, [("text", "1", 0.0), ("image", "2", 1.0)])]})
    assert r.status_code == 200, r.text
    # the merge unit adds `merged` to the last cycle's prompt; the experts' answers stay
    r = api.client.post(url, json={"cycle": 1, "samples": [sample("image", 0, [("merged", "2", 1.0)])]})
    assert r.status_code == 200, r.text
    body = api.client.get(url).json()
    assert body["cycle"] == 1 and body["cycles"] == [0, 1]
    [s] = body["samples"]
    assert s["domain"] == "image" and s["index"] == 0 and s["reference"] == "2" and s["images"] == [thumb()]
    assert {a["model"]: (a["answer"], a["correct"]) for a in s["answers"]} == {
        "text": ("1", False), "image": ("2", True), "merged": ("2", True)}
    old = api.client.get(url, params={"cycle": 0}).json()
    assert old["cycle"] == 0 and [(s["domain"], s["index"], s["images"]) for s in old["samples"]] == [
        ("image", 0, [thumb()]), ("text", 3, [])]
    assert api.client.get(url, params={"cycle": 7}).json()["samples"] == []


def test_roles_and_unknown_run(api: Api) -> None:
    run_id = api.create_run()["id"]
    token = api.client.post("/api/v1/tokens", json={"name": "viewer", "role": "read"}).json()["token"]
    h = {"Authorization": f"Bearer {token}"}
    url = f"/api/v1/runs/{run_id}/samples"
    assert api.anon.post(url, headers=h, json={"cycle": 0, "samples": [sample()]}).status_code == 403
    assert api.anon.get(url, headers=h).status_code == 200
    assert api.anon.get(url).status_code == 401
    assert api.client.post("/api/v1/runs/999999/samples", json={"cycle": 0, "samples": [sample()]}).status_code == 404
    assert api.client.get("/api/v1/runs/999999/samples").status_code == 404


@pytest.mark.parametrize("body, status, field", [
    ({"cycle": 0, "samples": [sample(images=[thumb(MAX_THUMB_PX + 1, 20)])]}, 422, "samples.0.images.0"),
    ({"cycle": 0, "samples": [sample(images=[base64.b64encode(b"GIF89a" + bytes(40)).decode()])]}, 422,
     "samples.0.images.0"),
    ({"cycle": 0, "samples": [sample(images=["not base64!"])]}, 422, "samples.0.images.0"),
    ({"cycle": 0, "samples": [sample(images=["A" * 70_000])]}, 422, "samples.0.images.0"),
    ({"cycle": 0, "samples": [sample(images=[thumb()] * 17)]}, 422, "samples.0.images"),
    ({"cycle": 0, "samples": [sample(index=i) for i in range(MAX_SAMPLES + 1)]}, 422, "samples"),
    ({"cycle": 0, "samples": []}, 422, "samples"),
    ({"cycle": -1, "samples": [sample()]}, 422, "cycle"),
    ({"cycle": 0, "samples": [sample(answers=[("image", "2", 1.5)])]}, 422, "samples.0.answers.0.score"),
    ({"cycle": 0, "samples": [sample(domain="no spaces")]}, 422, "samples.0.domain"),
])
def test_bad_samples_are_4xx_naming_the_field(api: Api, body: dict, status: int, field: str) -> None:
    run_id = api.create_run()["id"]
    r = api.client.post(f"/api/v1/runs/{run_id}/samples", json=body)
    assert r.status_code == status, r.text
    assert field in {e["field"] for e in r.json()["errors"]}, r.json()
    assert api.client.get(f"/api/v1/runs/{run_id}/samples").json()["samples"] == []  # nothing half-written


def test_oversize_body_is_413(api: Api) -> None:
    run_id = api.create_run()["id"]
    # ~5 MB: over this route's 4 MiB, under the app's 8 MiB; refused before it is parsed
    big = [sample(index=i, images=["A" * 40_000] * 2) for i in range(MAX_SAMPLES)]
    r = api.client.post(f"/api/v1/runs/{run_id}/samples", json={"cycle": 0, "samples": big})
    assert r.status_code == 413 and "body" in r.json()["detail"], r.text


def test_bad_cycle_query_is_422(api: Api) -> None:
    run_id = api.create_run()["id"]
    r = api.client.get(f"/api/v1/runs/{run_id}/samples", params={"cycle": "x"})
    assert r.status_code == 422 and "cycle" in r.text

"""Metrics: idempotent ingestion, run-level series, downsampling, bad batches leave nothing behind."""

from __future__ import annotations

import math

import pytest

from tests.server.conftest import Api


def _points(n: int, expert: str | None = "text", key: str = "loss/grpo", scale: float = 1.0) -> list[dict]:
    return [{"expert": expert, "key": key, "step": i, "value": scale * math.sin(i), "wall_time": 1.7e9 + i}
            for i in range(n)]


def _series(api: Api, run_id: int, **params) -> list[dict]:
    r = api.client.get(f"/api/v1/runs/{run_id}/metrics", params=params)
    assert r.status_code == 200, r.text
    return r.json()["series"]


def test_same_batch_twice_is_stored_once_and_last_write_wins(api: Api) -> None:
    run_id = api.create_run()["id"]
    url = f"/api/v1/runs/{run_id}/metrics"
    batch = {"points": _points(50)}
    assert api.client.post(url, json=batch).json() == {"points": 50}
    assert api.client.post(url, json=batch).json() == {"points": 50}
    [series] = _series(api, run_id)
    assert len(series["points"]) == 50
    assert api.client.post(url, json={"points": _points(50, scale=2.0)[:10]}).status_code == 200
    [series] = _series(api, run_id)
    assert len(series["points"]) == 50
    assert series["points"][3]["value"] == pytest.approx(2.0 * math.sin(3))
    assert series["points"][30]["value"] == pytest.approx(math.sin(30))


def test_repeated_point_within_a_batch_keeps_the_last(api: Api) -> None:
    run_id = api.create_run()["id"]
    pts = [{"expert": "text", "key": "k", "step": 1, "value": v} for v in (1.0, 2.0, 3.0)]
    assert api.client.post(f"/api/v1/runs/{run_id}/metrics", json={"points": pts}).json() == {"points": 1}
    [series] = _series(api, run_id)
    assert [p["value"] for p in series["points"]] == [3.0]
    assert series["points"][0]["wall_time"] > 1e9  # default: time received


def test_series_by_key_and_expert_and_run_level(api: Api) -> None:
    run_id = api.create_run()["id"]
    pts = _points(5) + _points(5, expert="image") + _points(3, expert=None, key="lr") + _points(2, expert="merged", key="acc/text")
    assert api.client.post(f"/api/v1/runs/{run_id}/metrics", json={"points": pts}).status_code == 200
    all_series = _series(api, run_id)
    assert {(s["expert"], s["key"]) for s in all_series} == {
        ("text", "loss/grpo"), ("image", "loss/grpo"), (None, "lr"), ("merged", "acc/text")}
    assert [s["expert"] for s in _series(api, run_id, key="loss/grpo")] == ["image", "text"]
    [text] = _series(api, run_id, key="loss/grpo", expert="text")
    assert [p["step"] for p in text["points"]] == [0, 1, 2, 3, 4]
    assert set(text["points"][0]) == {"step", "value", "wall_time"}
    [run_level] = _series(api, run_id, expert="")
    assert run_level["expert"] is None and run_level["key"] == "lr" and len(run_level["points"]) == 3
    assert _series(api, run_id, key="nothing") == []


def test_downsampling_keeps_each_buckets_min_and_max(api: Api) -> None:
    run_id = api.create_run()["id"]
    n, max_points = 2000, 100
    pts = _points(n)
    pts[777]["value"] = 50.0  # spikes averaging would hide
    pts[1234]["value"] = -50.0
    assert api.client.post(f"/api/v1/runs/{run_id}/metrics", json={"points": pts}).status_code == 200
    [series] = _series(api, run_id, max_points=max_points)
    got = series["points"]
    assert len(got) <= max_points and len(got) >= max_points // 2
    steps = [p["step"] for p in got]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    values = {p["step"]: p["value"] for p in got}
    assert values[777] == 50.0 and values[1234] == -50.0
    # every bucket (n / (max_points / 2) = 40 steps) keeps exactly its min and its max
    width = n // (max_points // 2)
    for b in range(max_points // 2):
        bucket = [p["value"] for p in pts[b * width:(b + 1) * width]]
        kept = [values[s] for s in steps if b * width <= s < (b + 1) * width]
        assert sorted(kept) == sorted({min(bucket), max(bucket)})
    [short] = _series(api, run_id, max_points=5000)
    assert len(short["points"]) == n  # shorter than max_points: untouched
    r = api.client.get(f"/api/v1/runs/{run_id}/metrics", params={"max_points": 1})
    assert r.status_code == 422 and r.json()["detail"].startswith("max_points")


def test_oversized_batch_is_refused_whole(api: Api) -> None:
    run_id = api.create_run()["id"]
    r = api.client.post(f"/api/v1/runs/{run_id}/metrics", json={"points": _points(10_001)})
    assert r.status_code in (413, 422) and r.json()["detail"].startswith("points")
    assert _series(api, run_id) == []
    assert api.client.post(f"/api/v1/runs/{run_id}/metrics", json={"points": _points(10_000)}).json() == {"points": 10_000}


@pytest.mark.parametrize("raw, field", [
    ('{"points": [{"expert": "text", "key": "k", "step": 1, "value": NaN}]}', "points.0.value"),
    ('{"points": [{"expert": "text", "key": "k", "step": 1, "value": Infinity}]}', "points.0.value"),
    ('{"points": [{"expert": "text", "key": "k", "step": 1, "value": 1e999}]}', "points.0.value"),
    ('{"points": [{"expert": "text", "key": "k", "step": -1, "value": 1}]}', "points.0.step"),
    ('{"points": [{"expert": "text", "key": "k", "step": "x", "value": 1}]}', "points.0.step"),
    ('{"points": [{"expert": "text", "key": "k", "step": 1, "value": "high"}]}', "points.0.value"),
    ('{"points": [{"expert": "text", "key": "../../etc", "step": 1, "value": 1}]}', "points.0.key"),
    ('{"points": [{"expert": "../x", "key": "k", "step": 1, "value": 1}]}', "points.0.expert"),
    ('{"points": [{"expert": "audio", "key": "k", "step": 1, "value": 1}]}', "points.0.expert"),
    ('{"points": [{"expert": "text", "key": "k", "step": 1, "value": 1, "color": "red"}]}', "points.0.color"),
    ('{"points": [{"expert": "text", "key": "k", "step": 1, "value": 1, "wall_time": -5}]}', "points.0.wall_time"),
    ('{"points": {"a": 1}}', "points"),
    ('{"pts": []}', "points"),
    ('{"points": [', "body"),
    ('[]', "body"),
])
def test_bad_points_are_422_naming_the_field_and_nothing_is_written(api: Api, raw: str, field: str) -> None:
    run_id = api.create_run()["id"]
    good = ',{"expert": "text", "key": "ok", "step": 1, "value": 1}'
    body = raw.replace("}]}", "}" + good + "]}", 1) if raw.endswith("}]}") else raw  # a good point after the bad one
    r = api.client.post(f"/api/v1/runs/{run_id}/metrics", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"].split(":")[0] or r.json()["detail"].startswith(field), r.json()
    assert _series(api, run_id) == []


def test_metrics_of_unknown_run(api: Api) -> None:
    r = api.client.post("/api/v1/runs/999999/metrics", json={"points": _points(2)})
    assert r.status_code == 404
    assert api.client.get("/api/v1/runs/999999/metrics").status_code == 404


@pytest.mark.parametrize("max_points", [2, 3, 10, 999])
def test_sql_downsampling_matches_the_reference(api: Api, max_points: int) -> None:
    import random

    from server.downsample import minmax_buckets

    rng = random.Random(max_points)
    steps = sorted(rng.sample(range(0, 50_000), 3000))  # irregular steps, distinct values
    pts = [{"expert": "image", "key": "reward/mean", "step": s, "value": rng.random(), "wall_time": float(s)} for s in steps]
    assert api.client.post(f"/api/v1/runs/{api.create_run()['id']}/metrics", json={"points": pts}).status_code == 200
    run_id = api.client.get("/api/v1/runs").json()["items"][0]["id"]
    [series] = _series(api, run_id, max_points=max_points)
    want = minmax_buckets([(p["step"], p["value"], p["wall_time"]) for p in pts], max_points)
    assert [(p["step"], p["value"], p["wall_time"]) for p in series["points"]] == want

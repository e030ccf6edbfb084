"""What the shared contract adds to the API: metrics carry their cycle, GET /vocab, typed knobs, the migration."""

from __future__ import annotations

import json
import re

from sqlalchemy import create_engine, text

from contract import metrics as M
from contract.schemas import KnobsPublic
from contract.vocab import STATUSES, STRATEGIES, BUILTIN_DOMAINS, VERIFIERS
from server.db import upgrade
from tests.server.conftest import SPEC, Api


def _points(api: Api, run_id: int, **params) -> list[dict]:
    r = api.client.get(f"/api/v1/runs/{run_id}/metrics", params=params)
    assert r.status_code == 200, r.text
    return [p for s in r.json()["series"] for p in s["points"]]


def test_metrics_carry_their_cycle_and_old_points_look_as_before(api: Api) -> None:
    run_id = api.create_run()["id"]
    body = {"points": [{"expert": "text", "key": "acc/text", "step": 0, "cycle": 0, "value": 0.25},
                       {"expert": "text", "key": "acc/text", "step": 5, "cycle": 1, "value": 0.5},
                       {"expert": "text", "key": "acc/text", "step": 9, "cycle": 2, "value": 0.75},
                       {"expert": "text", "key": "loss/grpo", "step": 1, "value": 0.1}]}
    assert api.client.post(f"/api/v1/runs/{run_id}/metrics", json=body).status_code == 200
    acc = _points(api, run_id, key="acc/text")
    assert [(p["step"], p["cycle"]) for p in acc] == [(0, 0), (5, 1), (9, 2)]
    [loss] = _points(api, run_id, key="loss/grpo")
    assert set(loss) == {"step", "value", "wall_time"}  # posted without a cycle: no cycle field
    # downsampled series keep the cycle of the points they keep
    many = {"points": [{"expert": "text", "key": "reward/mean", "step": s, "cycle": 1 + s // 100,
                        "value": float(s % 7)} for s in range(400)]}
    assert api.client.post(f"/api/v1/runs/{run_id}/metrics", json=many).status_code == 200
    kept = _points(api, run_id, key="reward/mean", max_points=20)
    assert 2 <= len(kept) <= 20 and all(p["cycle"] == 1 + p["step"] // 100 for p in kept)
    bad = {"points": [{"expert": "text", "key": "acc/text", "step": 1, "cycle": -1, "value": 0.5}]}
    r = api.client.post(f"/api/v1/runs/{run_id}/metrics", json=bad)
    assert r.status_code == 422 and "cycle" in r.json()["detail"]


def test_vocab_lists_what_the_server_knows(api: Api) -> None:
    assert api.anon.get("/api/v1/vocab").status_code == 401
    r = api.client.get("/api/v1/vocab")
    assert r.status_code == 200, r.text
    v = r.json()
    assert [s["name"] for s in v["strategies"]] == list(STRATEGIES) and all(s["note"] for s in v["strategies"])
    assert v["builtin_domains"] == list(BUILTIN_DOMAINS) and len(v["builtin_domains"]) == 14  # 12 text, 2 visual (builtin:shapes, builtin:motion)
    assert v["verifiers"] == list(VERIFIERS) and v["statuses"] == list(STATUSES)
    assert v["extracts"] == ["last", "first", "hash", "boxed", "answer_tag", "whole"]
    assert v["domain_types"] == ["jsonl", "dataset"]
    assert v["status_sets"]["terminal"] == ["cancelled", "completed", "failed"]
    assert v["actions"]["resume"] == ["crashed", "paused"]
    assert {m["key"] for m in v["metrics"]} == {d.key for d in M.REGISTRY}
    acc = next(m for m in v["metrics"] if m["key"] == "acc/<domain>")
    assert (acc["reduction"], acc["phase"], acc["per"]) == ("mean", "eval", "cycle")


def test_knob_values_are_typed_on_the_wire(api: Api) -> None:
    run_id = api.create_run()["id"]
    r = api.client.patch(f"/api/v1/runs/{run_id}/knobs",
                         json={"expected_version": 0, "changes": {"teacher_weights": {"text": {"image": 0.0}}}})
    assert r.status_code == 200, r.text
    values = r.json()["values"]
    # per student and teacher: the other weight of `text` stays
    assert values["teacher_weights"]["text"] == {"image": 0.0, "video": 1.0}
    knobs = KnobsPublic.model_validate(api.client.get(f"/api/v1/runs/{run_id}/knobs").json())  # as the client reads it
    assert knobs.values.teachers(_spec(), "text") == {"video": 1.0}
    assert knobs.values.steps("rl") == SPEC["schedule"]["rl_steps"] and knobs.pending[0].version == 1


def _spec():
    from contract.spec import parse_spec

    return parse_spec(SPEC)


def test_migration_backfills_the_cycle_of_old_points(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0001")
    spec = {**SPEC, "experts": SPEC["experts"][:2], "schedule": {"cycles": 2, "rl_steps": 2, "opd_steps": 1}}
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text("INSERT INTO runs (id, name, strategy, spec, status, cycle, progress, created_at, "
                       "status_changed_at) VALUES (1, 'old', 'copd', :s, 'completed', 2, 1.0, "
                       "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"), {"s": json.dumps(spec)})
        rows = [("text", "acc/image", 0), ("text", "acc/image", 3), ("text", "acc/image", 6),
                ("text", "overlap/image", 3), ("text", "overlap/image", 6), ("", "overlap/mean", 1),
                ("", "overlap/mean", 2), ("merged", "acc/text", 6), ("text", "loss/grpo", 1),
                ("text", "loss/grpo", 3), ("text", "loss/grpo", 4), ("text", "loss/grpo", 6),
                ("image", "loss/grpo", 1)]
        for e, k, s in rows:
            c.execute(text("INSERT INTO metrics (run_id, expert, key, step, value) VALUES (1, :e, :k, :s, 0.5)"),
                      {"e": e, "k": k, "s": s})
        for cycle, step, phase in ((1, 2, "rl"), (1, 3, "opd"), (2, 5, "rl"), (2, 6, "opd")):
            c.execute(text("INSERT INTO checkpoints (run_id, expert, cycle, step, uri, sha256, bytes, final, metrics, "
                           "created_at) VALUES (1, 'text', :c, :s, :u, :h, 1, 0, '{}', CURRENT_TIMESTAMP)"),
                      {"c": cycle, "s": step, "u": f"/x/c{cycle}-{phase}", "h": "0" * 64})
    upgrade(url)
    with engine.connect() as c:
        got = {(e, k, s): cyc for e, k, s, cyc in c.execute(text("SELECT expert, key, step, cycle FROM metrics"))}
    engine.dispose()
    assert [got[("text", "acc/image", s)] for s in (0, 3, 6)] == [0, 1, 2]
    assert [got[("text", "overlap/image", s)] for s in (3, 6)] == [1, 2]
    assert [got[("", "overlap/mean", s)] for s in (1, 2)] == [1, 2]
    assert got[("merged", "acc/text", 6)] == 2
    assert [got[("text", "loss/grpo", s)] for s in (1, 3, 4, 6)] == [1, 1, 2, 2]
    assert got[("image", "loss/grpo", 1)] is None  # no checkpoint of image: nothing decides its cycle


def test_openapi_docs_work_offline(api: Api) -> None:
    page = api.anon.get("/docs")
    assert page.status_code == 200 and "cdn." not in page.text  # no script from a CDN
    scripts = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', page.text)
    assert scripts and all(api.anon.get(s).status_code == 200 for s in scripts)
    assert api.anon.get("/redoc").status_code == 200 and api.anon.get("/openapi.json").status_code == 200

"""Runs: create from a spec, get, list with paging and filter, delete, fork lineage."""

from __future__ import annotations

import pytest

from tests.server.conftest import SPEC, Api, spec


def test_create_returns_draft_with_spec_fields(api: Api) -> None:
    run = api.create_run()
    assert run["status"] == "draft"
    assert run["name"] == "tiny-copd" and run["strategy"] == "copd" and run["topology"] == "all_pairs"
    assert run["schedule"] == {"cycles": 4, "rl_steps": 3, "opd_steps": 2}
    assert run["grpo"]["eps_high"] == 0.28 and run["opd"]["beta"] == 1.0 and run["seed"] == 0  # defaults filled
    assert [e["name"] for e in run["experts"]] == ["text", "image", "video"]
    assert run["experts"][0] == {"name": "text", "domain": "builtin:arith", "status": "pending", "unit": None}
    assert run["cycle"] == 0 and run["phase"] is None and run["progress"] == 0.0
    assert run["started_at"] is None and run["finished_at"] is None and run["created_at"].endswith("Z")
    assert run["parent_run_id"] is None and run["parent_checkpoint_id"] is None
    assert api.client.get(f"/api/v1/runs/{run['id']}").json() == run


def test_jsonl_domain_round_trips(api: Api) -> None:
    experts = SPEC["experts"][:2] + [{"name": "mine", "domain": {"type": "jsonl", "path": "data/mine.jsonl",
                                                                  "verifier": "numeric"}}]
    run = api.create_run(experts=experts)
    assert run["experts"][2]["domain"]["path"] == "data/mine.jsonl"
    assert run["experts"][2]["domain"]["verifier"] == "numeric"


@pytest.mark.parametrize("change, field", [
    ({"experts": [{"name": "text", "domain": "builtin:x"}] + SPEC["experts"][1:]}, "experts.0.domain: unknown domain 'builtin:x'"),
    ({"experts": [{"name": "../etc", "domain": "builtin:arith"}] + SPEC["experts"][1:]}, "experts.0.name"),
    ({"name": "a/b"}, "name"),
    ({"strategy": "magic"}, "strategy"),
    ({"topology": "hub:nobody"}, "topology"),
    ({"schedule": {"cycles": -1}}, "schedule.cycles"),
    ({"grpo": {"lr": 0}}, "grpo.lr"),
    ({"unknown_field": 1}, "unknown_field"),
    ({"seed": "zero"}, "seed"),
    ({"experts": [{"name": "text", "domain": {"type": "jsonl"}}] + SPEC["experts"][1:]}, "experts.0.domain.path"),
])
def test_bad_spec_is_422_naming_the_field(api: Api, change: dict, field: str) -> None:
    r = api.client.post("/api/v1/runs", json=spec(**change))
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(field), r.json()
    assert api.client.get("/api/v1/runs").json()["total"] == 0  # nothing written


def test_unknown_run_is_404_and_garbage_id_422(api: Api) -> None:
    r = api.client.get("/api/v1/runs/424242")
    assert r.status_code == 404 and "run_id" in r.json()["detail"]
    for bad in ("abc", "-1", "0", "99999999999999999999", "1.5", "..%2F..%2Fetc"):
        r = api.client.get(f"/api/v1/runs/{bad}")
        assert r.status_code in (404, 422), (bad, r.status_code)
        if r.status_code == 422:
            assert r.json()["detail"].startswith("run_id")


def test_list_pages_newest_first_and_filters_by_status(api: Api) -> None:
    ids = [api.create_run(name=f"r{i}")["id"] for i in range(5)]
    api.act(ids[0], "start")
    api.act(ids[1], "start")
    page = api.client.get("/api/v1/runs", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 5 and [r["id"] for r in page["items"]] == [ids[3], ids[2]]
    queued = api.client.get("/api/v1/runs", params={"status": "queued"}).json()
    assert queued["total"] == 2 and {r["id"] for r in queued["items"]} == {ids[0], ids[1]}
    both = api.client.get("/api/v1/runs", params=[("status", "queued"), ("status", "draft")]).json()
    assert both["total"] == 5
    r = api.client.get("/api/v1/runs", params={"status": "sleeping"})
    assert r.status_code == 422 and r.json()["detail"].startswith("status")
    r = api.client.get("/api/v1/runs", params={"limit": 0})
    assert r.status_code == 422 and r.json()["detail"].startswith("limit")


@pytest.mark.parametrize("status", ["queued", "running", "paused"])
def test_delete_refused_while_active(api: Api, status: str) -> None:
    run = api.running_run() if status != "queued" else api.create_run()
    if status == "queued":
        api.act(run["id"], "start")
    if status == "paused":
        api.act(run["id"], "pause")
    r = api.client.delete(f"/api/v1/runs/{run['id']}")
    assert r.status_code == 409 and status in r.json()["detail"]
    assert api.client.get(f"/api/v1/runs/{run['id']}").status_code == 200


def test_delete_removes_run_and_what_it_owns(api: Api) -> None:
    run = api.create_run()
    api.client.post(f"/api/v1/runs/{run['id']}/metrics", json={"points": [{"expert": "text", "key": "k", "step": 1, "value": 1.0}]})
    assert api.client.delete(f"/api/v1/runs/{run['id']}").status_code == 204
    assert api.client.get(f"/api/v1/runs/{run['id']}").status_code == 404
    assert api.client.get(f"/api/v1/runs/{run['id']}/metrics").status_code == 404
    assert api.client.delete(f"/api/v1/runs/{run['id']}").status_code == 404


def _checkpoint(api: Api, run_id: int, expert: str = "text", cycle: int = 1, step: int = 5) -> dict:
    body = {"expert": expert, "cycle": cycle, "step": step, "uri": f"/ckpt/{run_id}/{expert}/c{cycle}",
            "sha256": "ab" * 32, "bytes": 1234, "metrics": {"acc/text": 0.5}}
    r = api.client.post(f"/api/v1/runs/{run_id}/checkpoints", json=body)
    assert r.status_code in (200, 201), r.text
    return r.json()


def test_fork_keeps_lineage_and_applies_overrides(api: Api) -> None:
    parent = api.running_run()
    ckpt = _checkpoint(api, parent["id"], cycle=2)
    r = api.client.post(f"/api/v1/runs/{parent['id']}/fork",
                        json={"checkpoint_id": ckpt["id"], "overrides": {"schedule": {"cycles": 8}, "opd": {"beta": 0.5}}})
    assert r.status_code == 201, r.text
    fork = r.json()
    assert fork["status"] == "draft" and fork["id"] != parent["id"]
    assert fork["parent_run_id"] == parent["id"] and fork["parent_checkpoint_id"] == ckpt["id"]
    assert fork["name"] == "tiny-copd-fork" and fork["cycle"] == 2
    assert fork["schedule"] == {"cycles": 8, "rl_steps": 3, "opd_steps": 2} and fork["opd"]["beta"] == 0.5
    knobs = api.client.get(f"/api/v1/runs/{fork['id']}/knobs").json()
    assert knobs["values"]["beta"] == 0.5  # version 0 comes from the fork's own spec
    named = api.client.post(f"/api/v1/runs/{parent['id']}/fork", json={"checkpoint_id": ckpt["id"], "name": "branch-2"})
    assert named.status_code == 201 and named.json()["name"] == "branch-2"
    # the parent cannot be deleted from under its forks
    api.act(parent["id"], "cancel")
    r = api.client.delete(f"/api/v1/runs/{parent['id']}")
    assert r.status_code == 409 and "forks" in r.json()["detail"]


def test_fork_bad_input(api: Api) -> None:
    parent = api.running_run()
    other = api.running_run()
    ckpt = _checkpoint(api, other["id"])
    r = api.client.post(f"/api/v1/runs/{parent['id']}/fork", json={"checkpoint_id": ckpt["id"]})
    assert r.status_code == 404 and r.json()["detail"].startswith("checkpoint_id")
    own = _checkpoint(api, parent["id"])
    r = api.client.post(f"/api/v1/runs/{parent['id']}/fork",
                        json={"checkpoint_id": own["id"], "overrides": {"schedule": {"cycles": -3}}})
    assert r.status_code == 422 and r.json()["detail"].startswith("overrides.schedule.cycles")
    r = api.client.post(f"/api/v1/runs/{parent['id']}/fork", json={"checkpoint_id": own["id"], "name": "../x"})
    assert r.status_code == 422 and r.json()["detail"].startswith("name")
    r = api.client.post(f"/api/v1/runs/{parent['id']}/fork", json={"checkpoint_id": "one"})
    assert r.status_code == 422 and r.json()["detail"].startswith("checkpoint_id")
    r = api.client.post("/api/v1/runs/999999/fork", json={"checkpoint_id": own["id"]})
    assert r.status_code == 404


def test_dataset_domain_round_trips_with_a_plugin(api: Api) -> None:
    domain = {"type": "dataset", "path": "data/gsm8k", "answer_key": "reward_model.ground_truth",
              "source_key": "data_source", "sources": ["gsm8k"], "eval": {"split": "test"},
              "verifier": {"function": "rewards/math.py:compute_score"}}
    run = api.create_run(experts=SPEC["experts"][:2] + [{"name": "mine", "domain": domain}])
    got = run["experts"][2]["domain"]
    assert got["sources"] == ["gsm8k"] and got["verifier"] == {"function": "rewards/math.py:compute_score"}
    assert got["eval"] == {"path": None, "split": "test", "fraction": None} and got["system_prompt"] is None


@pytest.mark.parametrize("domain, field", [
    ({"type": "dataset", "path": "/etc/passwd"}, "experts.2.domain.path: '/etc/passwd' is outside the allowed data roots"),
    ({"type": "jsonl", "path": "../../../etc/x.jsonl"}, "experts.2.domain.path: '../../../etc/x.jsonl' is outside"),
    ({"type": "dataset", "path": "data/t.parquet", "eval": {"path": "/tmp/../etc/e.parquet"}}, "experts.2.domain.eval.path"),
    ({"type": "dataset", "path": "data/t.parquet", "verifier": {"function": "/etc/evil.py:f"}},
     "experts.2.domain.verifier.function: '/etc/evil.py' is outside"),
    ({"type": "dataset", "path": "data/t.parquet", "sources": ["a"]}, "experts.2.domain.sources: needs source_key"),
    ({"type": "dataset"}, "experts.2.domain.path: give exactly one of path"),
    ({"type": "dataset", "path": "t.parquet", "eval": {"split": "test"}}, "experts.2.domain.eval.split: a single file"),
    ({"type": "dataset", "path": "d", "verifier": {"function": "no-colon"}}, "experts.2.domain.verifier.function"),
    ({"type": "dataset", "path": "d", "verifier": "math", "extract": "last"}, "experts.2.domain.extract"),
    ({"type": "parquet", "path": "d"}, "experts.2.domain.type: must be jsonl or dataset"),
])
def test_bad_dataset_domain_is_422_naming_the_field(api: Api, domain: dict, field: str) -> None:
    r = api.client.post("/api/v1/runs", json=spec(experts=SPEC["experts"][:2] + [{"name": "mine", "domain": domain}]))
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(field), r.json()
    assert api.client.get("/api/v1/runs").json()["total"] == 0  # nothing written

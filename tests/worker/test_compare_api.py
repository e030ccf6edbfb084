"""`copd compare` through the API (COPD_API_URL set): the suite's runs are trained by real workers, appear in
the API (so in the dashboard) named <suite>-<entry>-s<seed>, and the report is written from them."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.worker.conftest import tiny_spec

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def test_compare_submits_its_runs_through_the_api(make_stack, redis_url, tmp_path):
    stack = make_stack(broker_url=redis_url)
    stack.start_api()
    stack.start_worker()
    spec = tiny_spec(schedule={"cycles": 1, "rl_steps": 1, "opd_steps": 1}, experts=[
        {"name": "text", "domain": "builtin:arith"}, {"name": "video", "domain": "builtin:frames"}])
    del spec["name"]
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "apisuite", "spec": spec, "seeds": [0], "entries": [
        {"name": "copd", "strategy": "copd"},
        {"name": "mixed_rlvr", "strategy": "mixed_rlvr"},
        {"name": "mixed_tokens", "strategy": "mixed_rlvr", "match_tokens": "copd"}]}))
    out = tmp_path / "out"
    res = stack.copd("compare", str(suite), "--out", str(out), timeout=600)  # COPD_API_URL is set: the API trains
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:] + stack.tails()
    assert f"at {stack.api_url}" in res.stdout
    with stack.client() as api:
        runs = {r.name: r for r in api.list_runs(limit=100).items}
        assert set(runs) == {"apisuite-copd-s0", "apisuite-mixed_rlvr-s0", "apisuite-mixed_tokens-s0"}
        assert all(r.status == "completed" for r in runs.values())
        tokens = runs["apisuite-mixed_tokens-s0"].mixed.train_tokens
    rows = [json.loads(line) for line in (out / "runs" / "copd" / "s0" / "metrics.jsonl").read_text().splitlines()]
    copd_tokens = sum(r["value"] for r in rows if r["key"] == "cost/train_tokens")
    assert tokens == round(copd_tokens) > 0  # one cycle: the budget is copd's training tokens
    text = (out / "report.md").read_text()
    for row in ("**copd** (copd)", "**mixed_tokens** (mixed_rlvr)", "Paired differences to `mixed_rlvr`"):
        assert row in text, row
    assert json.loads((out / "runs" / "copd" / "s0" / "api_run.json").read_text())["id"] == runs["apisuite-copd-s0"].id
    # a second call finds the runs done: nothing is submitted again
    again = stack.copd("compare", str(suite), "--out", str(out), timeout=120)
    assert again.returncode == 0 and again.stdout.count("done before") == 3, again.stdout + again.stderr
    with stack.client() as api:
        assert api.list_runs(limit=100).total == 3

"""Every metric key a run emits is in the registry (contract/metrics.py), and every point knows its cycle."""

from __future__ import annotations

import json

import pytest

from contract import metrics as M
from tests.trainer.conftest import tiny_spec
from trainer.local import train_local

ONE = {"cycles": 1, "rl_steps": 1, "opd_steps": 1}


@pytest.mark.parametrize("strategy,extra", [("copd", {"grpo": {"kl_coef": 0.1}}), ("mopd", {}), ("mixed_rlvr", {})])
def test_emitted_keys_are_registered_and_carry_their_cycle(strategy, extra, tmp_path, model_cache):
    spec = tiny_spec(strategy=strategy, schedule=ONE, **extra)
    train_local(spec, tmp_path / strategy, model_cache, log_fn=lambda m: None)
    rows = [json.loads(x) for x in (tmp_path / strategy / "metrics.jsonl").read_text().splitlines()]
    unknown = sorted({r["key"] for r in rows if M.lookup(r["key"]) is None})
    assert not unknown, f"keys missing from contract/metrics.py: {unknown}"
    assert all(isinstance(r["cycle"], int) and r["cycle"] >= 0 for r in rows)
    per_cycle = {(r["expert"], r["cycle"]) for r in rows if M.ACC.matches(r["key"])}
    assert ("merged", 1) in per_cycle and ("image", 0) in per_cycle  # the merged model, and the base at cycle 0
    for r in rows:  # a training step's points belong to a cycle the run has
        if M.lookup(r["key"]).per == "step":
            assert 1 <= r["cycle"] <= 2, r  # mopd's distillation is cycle 2


def test_a_teacher_at_weight_0_is_not_listed_as_teaching():
    from contract.spec import Knobs
    from trainer.units import teachers_note

    spec = tiny_spec(experts=[{"name": n, "domain": "builtin:arith"} for n in ("a", "b", "c")])
    knobs = Knobs.from_spec(spec).merged({"teacher_weights": {"a": {"b": 0.0}}})
    assert teachers_note(knobs, spec, "a", {"b": None, "c": None}) == ", teachers c (b at weight 0)"
    assert teachers_note(knobs, spec, "b", {"a": None, "c": None}) == ", teachers a, c"
    assert teachers_note(knobs, spec, "a", {}) == ""

"""Retention as pure functions: what a unit needs, and what the `checkpoints:` policy lets go (by hand)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from contract.retention import Held, needed_by_units, plan_retention, unit_inputs
from contract.plan import Unit
from contract.spec import CheckpointsSpec, RunSpec

EXPERTS = [{"name": "text", "domain": "builtin:arith"}, {"name": "image", "domain": "builtin:grid"}]


def _spec(**kw) -> RunSpec:
    return RunSpec.model_validate({"name": "r", "experts": EXPERTS, "schedule": {"cycles": 3, "rl_steps": 2,
                                                                                 "opd_steps": 1}} | kw)


def _held(policy: str = "text", cycles: int = 3, final_merged: bool = True) -> list[Held]:
    """Every checkpoint of one expert over `cycles` cycles (rl at 2c+..., opd after), plus the merged model."""
    out, step = [], 0
    for c in range(1, cycles + 1):
        step += 2
        out.append(Held(f"{policy}/c{c}-rl", policy, f"c{c}-rl", c, step))
        step += 1
        out.append(Held(f"{policy}/c{c}-opd", policy, f"c{c}-opd", c, step))
    if final_merged:
        out.append(Held("merged/final", "merged", "final", cycles, step, final=True, optimizer=False))
    return out


def test_defaults_keep_every_weight_and_only_the_newest_optimizer_state():
    policy = CheckpointsSpec()
    assert (policy.keep_last, policy.keep_every, policy.optimizer) == (None, None, "last")
    plan = plan_retention(policy, _held())
    assert plan.delete == []
    assert [h.key for h in plan.drop_optimizer] == ["text/c1-rl", "text/c1-opd", "text/c2-rl", "text/c2-opd",
                                                    "text/c3-rl"]


def test_keep_last_and_keep_every_spare_the_final_and_what_units_need():
    policy = CheckpointsSpec(keep_last=2, keep_every=2, optimizer="all")
    plan = plan_retention(policy, _held(cycles=5), needed={("text", "c1-rl")})
    # newest two: c5-rl, c5-opd; every 2nd cycle's end: c2-opd, c4-opd; needed: c1-rl; merged: final
    assert sorted(h.key for h in plan.delete) == ["text/c1-opd", "text/c2-rl", "text/c3-opd", "text/c3-rl",
                                                  "text/c4-rl"]
    assert plan.drop_optimizer == []


def test_optimizer_none_drops_it_everywhere_and_last_spares_a_units_own_input():
    held = _held()
    none = plan_retention(CheckpointsSpec(optimizer="none"), held, with_optimizer={("text", "c2-opd")})
    assert len(none.drop_optimizer) == 6  # every expert checkpoint; the merged model has none
    last = plan_retention(CheckpointsSpec(), held, with_optimizer={("text", "c2-opd")})
    assert "text/c2-opd" not in [h.key for h in last.drop_optimizer] and len(last.drop_optimizer) == 4


def test_unit_inputs_follow_the_layout():
    spec = _spec()
    assert unit_inputs(spec, Unit(1, "rl", "text")) == ([], None)  # the base model is not a checkpoint
    assert unit_inputs(spec, Unit(2, "rl", "text")) == ([("text", "c1-opd")], ("text", "c1-opd"))
    assert unit_inputs(spec, Unit(2, "opd", "text")) == ([("text", "c2-rl"), ("image", "c2-rl")], ("text", "c2-rl"))
    assert unit_inputs(spec, Unit(2, "eval")) == ([("text", "c2-opd"), ("image", "c2-opd")], None)
    assert unit_inputs(spec, Unit(3, "merge")) == ([("text", "c3-opd"), ("image", "c3-opd")], None)
    indep = _spec(strategy="independent")
    assert unit_inputs(indep, Unit(2, "opd", "text")) == ([("text", "c2-rl")], ("text", "c2-rl"))  # no teachers
    mixed = _spec(strategy="mixed_rlvr")
    assert unit_inputs(mixed, Unit(3, "mixed")) == ([("mixed", "c2-mixed")], ("mixed", "c2-mixed"))
    assert unit_inputs(mixed, Unit(3, "merge")) == ([("mixed", "c3-mixed")], None)
    mopd = _spec(strategy="mopd")
    refs, own = unit_inputs(mopd, Unit(4, "distill"))
    assert own is None and sorted(refs) == [("image", "c3-opd"), ("text", "c3-opd")]
    assert unit_inputs(mopd, Unit(5, "distill"))[1] == ("student", "c4-distill")


def test_needed_by_units_after_cycle_one_of_three():
    spec = _spec()
    done = ["c0/eval", "c1/rl/text", "c1/rl/image", "c1/opd/text", "c1/opd/image", "c1/eval"]
    needed, own = needed_by_units(spec, done)
    assert ("text", "c1-opd") in needed and ("text", "c1-rl") not in needed
    # each remaining rl / opd unit continues from its own input: c1-opd, c2-rl, c2-opd, c3-rl of both experts
    assert own == {(e, n) for e in ("text", "image") for n in ("c1-opd", "c2-rl", "c2-opd", "c3-rl")}


def test_a_lockstep_unit_reads_and_continues_every_expert():
    spec = _spec(opd={"teacher_sync": "step"})
    assert unit_inputs(spec, Unit(2, "lockstep")) == ([("text", "c2-rl"), ("image", "c2-rl")], None)
    done = ["c0/eval", "c1/rl/text", "c1/rl/image", "c1/lockstep", "c1/eval", "c2/rl/text", "c2/rl/image"]
    needed, own = needed_by_units(spec, done)
    assert {("text", "c2-rl"), ("image", "c2-rl")} <= own  # the lockstep continues both with optimizer state
    assert ("text", "c1-rl") not in needed


@pytest.mark.parametrize("bad, field", [({"keep_last": 0}, "keep_last"), ({"optimizer": "some"}, "optimizer"),
                                        ({"keep_every": 2}, "keep_every")])
def test_bad_retention_fields_name_the_field(bad, field):
    with pytest.raises(ValidationError) as err:
        _spec(checkpoints=bad)
    assert field in str(err.value)

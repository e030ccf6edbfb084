"""Spec validation, topologies, the unit plan and knob handling (no torch work)."""

import pytest

from trainer.schedule import Layout, Unit, plan
from trainer.spec import SpecError, beta_for, knobs_from_spec, parse_spec, validate_knob_changes
from trainer.units import _teacher_weights

THREE = [{"name": "text", "domain": "builtin:arith"}, {"name": "image", "domain": "builtin:grid"},
         {"name": "video", "domain": "builtin:frames"}]


def spec_of(**kw):
    return parse_spec({"name": "s", "experts": THREE, **kw})


def test_design_example_spec_parses():
    from pathlib import Path

    from trainer.spec import load_spec

    spec = load_spec(Path(__file__).parents[2] / "examples" / "copd-tiny.yaml")
    assert spec.expert_names == ["text", "image", "video"]
    assert (spec.schedule.cycles, spec.schedule.rl_steps, spec.schedule.opd_steps) == (4, 9, 6)
    assert spec.grpo.eps_high == 0.28 and spec.opd.beta == 1.0 and spec.merge.weights is None


def test_topologies():
    s = spec_of()
    assert s.teachers_of("text") == ["image", "video"]
    hub = spec_of(topology="hub:text")
    assert hub.teachers_of("text") == ["image", "video"]
    assert hub.teachers_of("video") == ["text"]


@pytest.mark.parametrize("data, field", [
    ({"topology": "ring"}, "topology"),
    ({"topology": "hub:nobody"}, "topology"),
    ({"schedule": {"cycles": -1}}, "schedule.cycles"),
    ({"grpo": {"group_size": 1}}, "grpo.group_size"),
    ({"opd": {"beta": -0.1}}, "opd.beta"),
    ({"merge": {"weights": {"text": 0.5, "image": 0.6}}}, "merge.weights"),
    ({"merge": {"weights": {"text": 0.5, "nobody": 0.5}}}, "merge.weights"),
    ({"experts": [{"name": "a/b", "domain": "builtin:grid"}, {"name": "c", "domain": "builtin:grid"}]}, "experts.0.name"),
    ({"experts": [{"name": "merged", "domain": "builtin:grid"}, {"name": "c", "domain": "builtin:grid"}]}, "reserved"),
    ({"experts": [{"name": "a", "domain": "builtin:grid"}, {"name": "a", "domain": "builtin:grid"}]}, "unique"),
    ({"experts": [{"name": "a", "domain": "builtin:grid"}]}, "at least 2"),
    ({"strategy": "magic"}, "strategy"),
])
def test_bad_specs_name_the_field(data, field):
    base = {"name": "s", "experts": THREE, **data}
    with pytest.raises(SpecError) as err:
        parse_spec(base)
    msg = str(err.value)
    assert field in msg and "\n" not in msg


def test_plan_order_and_units():
    s = spec_of(schedule={"cycles": 2, "rl_steps": 1, "opd_steps": 1})
    ids = [u.id for u in plan(s)]
    assert ids[0] == "c0/eval" and ids[-1] == "final/merge"
    assert ids[1:8] == ["c1/rl/text", "c1/rl/image", "c1/rl/video", "c1/opd/text", "c1/opd/image", "c1/opd/video", "c1/eval"]
    assert all(Unit.parse(i).id == i for i in ids)
    assert "final/merge" not in [u.id for u in plan(spec_of(strategy="independent"))]
    one = {"cycles": 1, "rl_steps": 1, "opd_steps": 1}
    assert [u.id for u in plan(spec_of(strategy="mopd", schedule=one))][-3:] == ["c2/distill", "c2/eval", "final/merge"]
    assert [u.id for u in plan(spec_of(strategy="mixed_rlvr", schedule=one))] == ["c0/eval", "c1/mixed", "c1/eval",
                                                                                  "final/merge"]


def test_layout_inputs_use_live_peers(tmp_path):
    lay = Layout(tmp_path, tmp_path / "base")
    assert lay.unit_input(Unit(1, "rl", "text")) == tmp_path / "base"
    assert lay.unit_input(Unit(2, "rl", "text")) == tmp_path / "checkpoints/text/c1-opd"
    assert lay.unit_input(Unit(2, "opd", "text")) == tmp_path / "checkpoints/text/c2-rl"
    assert lay.teacher_input("image", 2) == tmp_path / "checkpoints/image/c2-rl"


def test_knobs_defaults_validation_and_teacher_weights():
    s = spec_of()
    k = knobs_from_spec(s)
    assert k["beta"] == 1.0 and k["rl_steps"] == 3 and k["teacher_weights"]["text"] == {"image": 1.0, "video": 1.0}
    assert _teacher_weights(k, s, "text") == {"image": 0.5, "video": 0.5}
    assert _teacher_weights({**k, "teacher_weights": {"text": {"image": 3.0, "video": 1.0}}}, s, "text") == {"image": 0.75, "video": 0.25}
    assert _teacher_weights({**k, "teacher_weights": {"text": {"image": 0.0}}}, s, "text") == {"video": 1.0}
    assert beta_for({"beta": {"text": 0.25}}, "text", 1.0) == 0.25 and beta_for({"beta": 0.5}, "video", 1.0) == 0.5
    assert validate_knob_changes(s, {"beta": {"image": 0.5}, "lr": 1e-3}) == {"beta": {"image": 0.5}, "lr": 1e-3}
    for bad, needle in [({"beta": -1}, "beta"), ({"beta": {"nobody": 1}}, "nobody"), ({"rl_steps": -1}, "rl_steps"),
                        ({"lr": 0}, "lr"), ({"teacher_weights": {"text": {"image": -1}}}, "teacher_weights"),
                        ({"teacher_weights": {"text": {"text": 1}}}, "itself"), ({"nope": 1}, "nope")]:
        with pytest.raises(ValueError, match=needle):
            validate_knob_changes(s, bad)


def test_spec_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, trainer.spec, trainer.schedule; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)

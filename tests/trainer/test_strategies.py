"""The baselines' schedules: which policy trains on which data with which teacher at each step (no accuracy)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from tests.trainer.conftest import tiny_spec
from trainer.schedule import Layout, Unit, plan, steps_of
from trainer.spec import SpecError, knobs_from_spec

ONE = {"cycles": 1, "rl_steps": 1, "opd_steps": 1}


def ids(spec):
    return [u.id for u in plan(spec)]


def test_plans_of_the_baselines():
    s = tiny_spec(strategy="mixed_rlvr", schedule={"cycles": 2})
    assert ids(s) == ["c0/eval", "c1/mixed", "c1/eval", "c2/mixed", "c2/eval", "final/merge"]
    assert steps_of(s, Unit(1, "mixed")) == 2 * (2 + 2)  # experts × (rl_steps + opd_steps): the summed budget
    for strategy in ("static_opd", "mopd"):
        s = tiny_spec(strategy=strategy, schedule={"cycles": 2})
        expert_units = ids(tiny_spec(strategy="independent", schedule={"cycles": 2}))
        assert ids(s) == expert_units + ["c3/distill", "c3/eval", "c4/distill", "c4/eval", "final/merge"]
        assert sum(steps_of(s, Unit(c, "distill")) for c in (3, 4)) == 2 * (2 + 2)  # one expert's budget
    s = tiny_spec(strategy="mopd", distill={"steps": 5})
    assert steps_of(s, Unit(2, "distill")) == 5
    assert all(Unit.parse(i).id == i for i in ids(s))


def test_copd_independent_plans_unchanged():
    s = tiny_spec(schedule={"cycles": 1})
    assert ids(s) == ["c0/eval", "c1/rl/image", "c1/rl/video", "c1/opd/image", "c1/opd/video", "c1/eval", "final/merge"]
    assert ids(tiny_spec(strategy="independent", schedule={"cycles": 1}))[-1] == "c1/eval"


def test_single_policy_inputs(tmp_path):
    lay = Layout(tmp_path, tmp_path / "base")
    s = tiny_spec(strategy="static_opd", distill={"student": "video"})
    assert lay.single_input(s, Unit(2, "distill")) == (tmp_path / "checkpoints/video/c1-opd", False)
    s = tiny_spec(strategy="mopd", schedule={"cycles": 2})
    assert lay.single_input(s, Unit(3, "distill")) == (tmp_path / "base", False)
    assert lay.single_input(s, Unit(4, "distill")) == (tmp_path / "checkpoints/student/c3-distill", True)
    assert lay.final_sources(s) == [tmp_path / "checkpoints/student/c4-distill"]
    s = tiny_spec(strategy="mixed_rlvr", schedule={"cycles": 2})
    assert lay.single_input(s, Unit(1, "mixed")) == (tmp_path / "base", False)
    assert lay.final_sources(s) == [tmp_path / "checkpoints/mixed/c2-mixed"]


def test_teachers_of_the_distillation():
    assert tiny_spec(strategy="static_opd").distill_teachers() == ["video"]
    assert tiny_spec(strategy="static_opd", distill={"student": "video"}).distill_teachers() == ["image"]
    assert tiny_spec(strategy="mopd").distill_teachers() == ["image", "video"]


@pytest.mark.parametrize("field,value,needle", [
    ("distill", {"teacher": "nope"}, "distill.teacher"),
    ("distill", {"student": "nope"}, "distill.student"),
    ("mixed", {"weights": {"nope": 1.0}}, "mixed.weights"),
    ("opd", {"teacher_weights": {"image": {"image": 1.0}}}, "opd.teacher_weights.image.image"),
])
def test_baseline_fields_are_validated(field, value, needle):
    with pytest.raises(SpecError, match=needle.replace(".", r"\.")):
        tiny_spec(**{field: value})


def test_teacher_weights_in_spec_set_the_first_knobs():
    s = tiny_spec(opd={"teacher_weights": {"image": {"video": 0.0}}})
    assert knobs_from_spec(s)["teacher_weights"] == {"image": {"video": 0.0}, "video": {"image": 1.0}}


# -- a recorded tiny run per strategy ------------------------------------------------------------------


class Recorder:
    """Wraps the batch builders: (unit id, batch kind, teacher, domains of the prompts, alpha) per call."""

    def __init__(self, monkeypatch, spec):
        import trainer.baselines as baselines
        import trainer.local as local
        import trainer.steps as units  # step_batches, where the expert units draw their batches
        from trainer.domains import load_domain

        self.calls: list[tuple[str, str, str | None, frozenset[str], float]] = []
        self.unit = None
        owner = {}
        for e in spec.experts:
            dom = load_domain(e.domain, spec.seed)
            owner |= {s.prompt: e.name for s in (*dom.train, *dom.eval)}
        self.owner = owner

        def wrap_run_unit(orig):
            def run_unit(ctx, unit, reporter):
                self.unit = unit.id
                return orig(ctx, unit, reporter)
            return run_unit

        def wrap_native(orig):
            def native_batch(engine, domain, prompts, grpo, reference=None):
                self.calls.append((self.unit, "native", None, self.domains(prompts), 1.0))
                return orig(engine, domain, prompts, grpo, reference)
            return native_batch

        def wrap_cross(orig):
            def cross_batch(engine, teacher_name, teacher, prompts, grpo, opd, beta, weight):
                self.calls.append((self.unit, "cross", teacher_name, self.domains(prompts), weight))
                return orig(engine, teacher_name, teacher, prompts, grpo, opd, beta, weight)
            return cross_batch

        def wrap_pooled(orig):
            def pooled_batch(engine, items, grpo, reference=None, alpha=1.0):
                self.calls.append((self.unit, "pooled", None, self.domains([s for _, s in items]), alpha))
                return orig(engine, items, grpo, reference, alpha)
            return pooled_batch

        monkeypatch.setattr(local, "run_unit", wrap_run_unit(local.run_unit))
        monkeypatch.setattr(units, "native_batch", wrap_native(units.native_batch))
        monkeypatch.setattr(units, "cross_batch", wrap_cross(units.cross_batch))
        monkeypatch.setattr(baselines, "cross_batch", wrap_cross(baselines.cross_batch))
        monkeypatch.setattr(baselines, "pooled_batch", wrap_pooled(baselines.pooled_batch))

    def domains(self, prompts) -> frozenset[str]:
        return frozenset(self.owner[s.prompt] for s in prompts)

    def by_unit(self):
        out = defaultdict(list)
        for unit, kind, teacher, doms, w in self.calls:
            out[unit].append((kind, teacher, doms, w))
        return out


def run_recorded(strategy, tmp_path, model_cache, monkeypatch, **overrides):
    from trainer.local import train_local

    spec = tiny_spec(strategy=strategy, schedule=ONE, **overrides)
    rec = Recorder(monkeypatch, spec)
    train_local(spec, tmp_path / strategy, model_cache, log_fn=lambda m: None)
    rows = [json.loads(x) for x in (tmp_path / strategy / "metrics.jsonl").read_text().splitlines()]
    return rec.by_unit(), rows


def cost_steps(rows, expert):
    return [r["step"] for r in rows if r["expert"] == expert and r["key"] == "cost/train_tokens"]


G, V = frozenset({"image"}), frozenset({"video"})


def test_copd_and_independent_schedules(tmp_path, model_cache, monkeypatch):
    calls, rows = run_recorded("copd", tmp_path, model_cache, monkeypatch)
    assert calls["c1/rl/image"] == [("native", None, G, 1.0)]
    assert calls["c1/opd/image"] == [("native", None, G, 1.0), ("cross", "video", V, 1.0)]
    assert calls["c1/opd/video"] == [("native", None, V, 1.0), ("cross", "image", G, 1.0)]
    assert cost_steps(rows, "image") == [1, 2]
    monkeypatch.undo()
    calls, _ = run_recorded("independent", tmp_path, model_cache, monkeypatch)
    assert calls["c1/opd/image"] == [("native", None, G, 1.0)] and calls["c1/opd/video"] == [("native", None, V, 1.0)]


def test_copd_one_way(tmp_path, model_cache, monkeypatch):
    calls, _ = run_recorded("copd", tmp_path, model_cache, monkeypatch,
                            opd={"teacher_weights": {"image": {"video": 0.0}}})
    assert calls["c1/opd/image"] == [("native", None, G, 1.0)]
    assert calls["c1/opd/video"] == [("native", None, V, 1.0), ("cross", "image", G, 1.0)]


def test_mixed_rlvr_schedule(tmp_path, model_cache, monkeypatch):
    calls, rows = run_recorded("mixed_rlvr", tmp_path, model_cache, monkeypatch)
    steps = calls["c1/mixed"]
    assert len(steps) == 4 and all(k == "pooled" and doms == G | V for k, _, doms, _ in steps)
    assert cost_steps(rows, "mixed") == [1, 2, 3, 4]
    assert {r["expert"] for r in rows if r["cycle"] == 1 and r["key"].startswith("acc/")} - {"merged"} == {"mixed"}
    merged = {r["key"] for r in rows if r["expert"] == "merged"}
    assert {"acc/image", "acc/video", "acc_mean"} <= merged
    assert (tmp_path / "mixed_rlvr" / "final" / "config.json").exists()


def test_static_opd_schedule(tmp_path, model_cache, monkeypatch):
    calls, rows = run_recorded("static_opd", tmp_path, model_cache, monkeypatch, distill={"alpha": 0.5})
    assert calls["c1/opd/image"] == [("native", None, G, 1.0)]  # the experts first, independently
    assert calls["c2/distill"] == [("pooled", None, G, 0.5), ("cross", "video", V, 1.0)] * 2
    assert cost_steps(rows, "student") == [1, 2]
    assert {r["expert"] for r in rows if r["cycle"] == 2 and r["key"].startswith("acc/")} == {"student"}
    assert any(r["expert"] == "merged" and r["key"] == "acc_mean" for r in rows)


def test_mopd_schedule(tmp_path, model_cache, monkeypatch):
    calls, _ = run_recorded("mopd", tmp_path, model_cache, monkeypatch, distill={"steps": 3})
    step = [("pooled", None, G | V, 1.0), ("cross", "image", G, 0.5), ("cross", "video", V, 0.5)]
    assert calls["c2/distill"] == step * 3
    calls2, _ = run_recorded("mopd", tmp_path / "a0", model_cache, monkeypatch, distill={"steps": 1, "alpha": 0.0})
    assert calls2["c2/distill"] == step[1:]


def test_independent_merge_unchanged_final(tmp_path, model_cache, monkeypatch):
    calls, rows = run_recorded("independent_merge", tmp_path, model_cache, monkeypatch)
    assert "c2/distill" not in calls
    assert Path(tmp_path / "independent_merge" / "final").exists()
    assert json.loads((tmp_path / "independent_merge" / "final" / "trainer_state.json").read_text())["merged_from"] == ["image", "video"]


@pytest.mark.parametrize("strategy,stop_after", [("mopd", "c3/distill"), ("mixed_rlvr", "c1/mixed")])
def test_baselines_resume_exactly(strategy, stop_after, tmp_path, model_cache):
    from tests.trainer.test_resume_and_cli import stable_rows
    from trainer.local import train_local

    spec = tiny_spec(strategy=strategy, schedule={"cycles": 2, "rl_steps": 1, "opd_steps": 1})
    quiet = dict(log_fn=lambda m: None)
    train_local(spec, tmp_path / "full", model_cache, **quiet)
    n = ids(spec).index(stop_after) + 1
    state = train_local(spec, tmp_path / "part", model_cache, max_units=n, **quiet)
    assert state.completed[-1] == stop_after
    train_local(spec, tmp_path / "part", model_cache, resume=True, **quiet)
    assert stable_rows(tmp_path / "part") == stable_rows(tmp_path / "full")
    assert any(r[3] == "cost/rollout_tokens" for r in stable_rows(tmp_path / "full"))

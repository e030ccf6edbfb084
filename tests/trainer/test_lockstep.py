"""opd.teacher_sync: step — Phase II of every expert as one unit, each student scored by its peers' live weights."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from contract.plan import Unit, plan
from contract.spec import SpecError
from tests.trainer.conftest import shipped_tiny, tiny_spec
from trainer import lockstep
from trainer.local import train_local
from trainer.reporter import JsonlReporter
from trainer.units import RunContext, run_unit

THREE = [{"name": "text", "domain": "builtin:arith"}, {"name": "image", "domain": "builtin:grid"},
         {"name": "video", "domain": "builtin:frames"}]


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_plan_and_validation():
    spec = tiny_spec(experts=THREE, schedule={"cycles": 2}, opd={"teacher_sync": "step"})
    ids = [u.id for u in plan(spec)]
    assert ids == ["c0/eval", "c1/rl/text", "c1/rl/image", "c1/rl/video", "c1/lockstep", "c1/eval",
                   "c2/rl/text", "c2/rl/image", "c2/rl/video", "c2/lockstep", "c2/eval", "final/merge"]
    assert Unit.parse("c1/lockstep") == Unit(1, "lockstep")
    # the default is the per-expert Phase II; strategies without mutual OPD ignore the field
    assert "c1/opd/text" in [u.id for u in plan(tiny_spec(experts=THREE))]
    assert "c1/opd/text" in [u.id for u in plan(tiny_spec(experts=THREE, strategy="independent",
                                                          opd={"teacher_sync": "step"}))]
    with pytest.raises(SpecError, match="opd.teacher_sync"):
        tiny_spec(opd={"teacher_sync": "always"})
    with pytest.raises(SpecError, match="opd.teacher_sync: step runs every expert in one process.*gpus_per_expert: 1"):
        tiny_spec(opd={"teacher_sync": "step"}, compute={"gpus_per_expert": 2}, grpo={"prompts_per_step": 4})


def test_one_step_equals_the_frozen_teachers(tmp_path, model_cache):
    """Before any step the live teachers are the end-of-Phase-I peers: one lockstep step gives bit for bit
    what the per-expert units give (the same prompts, samples and teacher scores)."""
    outs = {}
    for sync in ("phase", "step"):
        spec = tiny_spec(schedule={"cycles": 1, "rl_steps": 1, "opd_steps": 1}, opd={"teacher_sync": sync})
        outs[sync] = tmp_path / sync
        train_local(spec, outs[sync], model_cache, log_fn=lambda m: None)
    for e in ("image", "video"):
        a, b = (weights(outs[s] / f"checkpoints/{e}/c1-opd") for s in ("phase", "step"))
        assert all(torch.equal(a[k], b[k]) for k in a), e
    kl = {s: sorted((r["expert"], r["value"]) for r in rows(outs[s]) if r["key"] == "opd/kl") for s in outs}
    assert kl["phase"] == kl["step"]


def test_teachers_score_with_the_peers_current_weights(tmp_path, model_cache):
    """After a step, a student's teacher logprobs come from the peer's updated weights, not its frozen
    end-of-Phase-I checkpoint."""
    spec = tiny_spec(schedule={"cycles": 1, "rl_steps": 1, "opd_steps": 2}, opd={"teacher_sync": "step"},
                     tiny=shipped_tiny())  # experts that move after one step
    out = tmp_path / "run"
    train_local(spec, out, model_cache, log_fn=lambda m: None, max_units=3)  # c0/eval, c1/rl/image, c1/rl/video
    ctx = RunContext.create(spec, out, model_cache, log_fn=lambda m: None)
    reporter = JsonlReporter(out, {"rl_steps": 1, "opd_steps": 1})
    unit = Unit(1, "lockstep")
    subs = {e: Unit(1, "opd", e) for e in spec.expert_names}
    policies = {e: lockstep.open_policy(ctx, s, reporter, e, ctx.layout.unit_input(s), continues=True)[0]
                for e, s in subs.items()}
    streams = {e: lockstep.Stream(ctx.unit_seed(s), torch.device("cpu")) for e, s in subs.items()}
    rngs = {e: random.Random(ctx.unit_seed(s)) for e, s in subs.items()}
    live = lockstep.live_teachers(policies)
    teachers = {e: {t: live[t] for t in spec.teachers_of(e)} for e in subs}
    frozen = ctx.scorer(ctx.layout.teacher_input("video", 1))   # video as Phase I left it
    lockstep.lockstep_steps(ctx, unit, reporter, policies, streams, rngs, teachers, None, 1)
    reporter.close()
    # a batch of image's (the student) tokens, scored by video now and by video's frozen checkpoint
    roll = policies["image"].engine.sample([s.model_input for s in ctx.domains["video"].train[:4]], 2,
                                           temperature=1.0, max_new_tokens=spec.grpo.max_new_tokens)
    mask = roll.tokens.completion_mask.bool()
    now = teachers["image"]["video"].logprobs(roll.tokens)
    assert teachers["image"]["video"].model is policies["video"].model  # the very model being trained
    assert not torch.allclose(now[mask], frozen.logprobs(roll.tokens)[mask], atol=1e-6)
    # and the live scorer is exactly the current weights (a fresh copy of them scores the same)
    current = lockstep.HFEngine(policies["video"].model, policies["video"].tok).logprobs(roll.tokens)
    assert torch.equal(now, current)


def test_two_cycles_three_experts(tmp_path, model_cache):
    spec = tiny_spec(experts=THREE, schedule={"cycles": 2, "rl_steps": 1, "opd_steps": 2},
                     opd={"teacher_sync": "step"})
    out = tmp_path / "run"
    state = train_local(spec, out, model_cache, log_fn=lambda m: None)
    assert state.completed == [u.id for u in plan(spec)]
    pts = rows(out)
    for e in ("text", "image", "video"):
        steps = sorted(r["step"] for r in pts if r["expert"] == e and r["key"] == "opd/kl")
        assert steps == [2, 3, 5, 6]  # Phase II steps of both cycles, every expert
        assert {f"opd/kl/{t}" for t in spec.teachers_of(e)} <= {r["key"] for r in pts if r["expert"] == e}
        for c in (1, 2):  # overlap after Phase I and after Phase II of each cycle
            keys = {r["key"] for r in pts if r["expert"] == e and r["cycle"] == c}
            assert {"overlap/" + t for t in spec.teachers_of(e)} <= keys
            assert {"overlap_rl/" + t for t in spec.teachers_of(e)} <= keys
            assert {"overlap_top1_rl/" + t for t in spec.teachers_of(e)} <= keys
    run_level = {(r["key"], r["cycle"]) for r in pts if r["expert"] is None}
    assert {("overlap_rl/mean", 1), ("overlap_rl/mean", 2), ("overlap/mean", 2), ("overlap_top1_rl/mean", 2)} <= run_level
    assert "acc_mean" in {r["key"] for r in pts if r["expert"] == "merged"}
    events = (out / "events.jsonl").read_text()
    assert "c2/lockstep: 2 steps of 3 experts in lockstep" in events


def test_lockstep_resumes_from_the_start_of_the_phase(tmp_path, model_cache):
    """A lockstep unit cut off runs again from every expert's end-of-Phase-I checkpoint: the same result."""
    spec = tiny_spec(schedule={"cycles": 1, "rl_steps": 1, "opd_steps": 2}, opd={"teacher_sync": "step"})
    clean = tmp_path / "clean"
    train_local(spec, clean, model_cache, log_fn=lambda m: None)
    cut = tmp_path / "cut"
    train_local(spec, cut, model_cache, log_fn=lambda m: None, max_units=3)
    ctx = RunContext.create(spec, cut, model_cache, log_fn=lambda m: None)

    class Stop(JsonlReporter):
        calls = 0

        def should_stop(self) -> bool:  # cancelled before the second step: nothing is written
            self.calls += 1
            return self.calls > 1

    stop = Stop(tmp_path / "scratch", {"rl_steps": 1, "opd_steps": 2})
    with pytest.raises(lockstep.Cancelled):
        run_unit(ctx, Unit(1, "lockstep"), stop)
    assert not (cut / "checkpoints/image/c1-opd").exists()
    train_local(spec, cut, model_cache, log_fn=lambda m: None, resume=True)
    for e in ("image", "video"):
        a, b = weights(clean / f"checkpoints/{e}/c1-opd"), weights(cut / f"checkpoints/{e}/c1-opd")
        assert all(torch.equal(a[k], b[k]) for k in a), e
    assert weights(clean / "final") .keys() == weights(cut / "final").keys()


def test_expert_devices_round_robin(monkeypatch):
    """Expert i lives on visible GPU i mod n; without a GPU every expert shares the CPU."""
    monkeypatch.setattr(lockstep, "gpu_present", lambda: False)
    assert lockstep.expert_devices(3) == [torch.device("cpu")] * 3
    monkeypatch.setattr(lockstep, "gpu_present", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert lockstep.expert_devices(3) == [torch.device("cuda", 0), torch.device("cuda", 1), torch.device("cuda", 0)]


@pytest.mark.gpu
def test_lockstep_on_the_gpus(tmp_path, model_cache):
    """On a GPU machine: each expert on a visible GPU in turn (teachers score there) and the phase completes.
    (Not run where this was written: no GPU.)"""
    spec = tiny_spec(experts=THREE, schedule={"cycles": 1, "rl_steps": 1, "opd_steps": 2},
                     opd={"teacher_sync": "step"}, rollout={"engine": "hf"})
    out = tmp_path / "run"
    train_local(spec, out, model_cache, log_fn=lambda m: None)
    n = torch.cuda.device_count()
    events = (out / "events.jsonl").read_text()
    assert all(f"cuda:{i}" in events for i in range(min(n, 3)))
    pts = rows(out)
    for e in ("text", "image", "video"):
        assert sorted(r["step"] for r in pts if r["expert"] == e and r["key"] == "opd/kl") == [2, 3]
        assert max(r["value"] for r in pts if r["expert"] == e and r["key"] == "memory/peak_gb") > 0

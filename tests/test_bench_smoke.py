"""`python -m bench --smoke` runs end to end and prints every row of the table (no timing assertions)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_smoke_prints_the_table():
    env = {**os.environ, "COPD_TORCH_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "bench", "--smoke"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert any(line.startswith("| model | comparison | side |") for line in lines)
    sides = {tuple(c.strip() for c in line.split("|")[1:4]) for line in lines if line.startswith("| tiny |")}
    expected = {("tiny", "grpo_step", "copd"), ("tiny", "grpo_step", "hf_baseline"), ("tiny", "phase2_1t", "plain_grpo"),
                ("tiny", "phase2_1t", "plain_grpo_same"), ("tiny", "phase2_1t", "phase2_1t"),
                ("tiny", "phase2_2t", "phase2_2t"), ("tiny", "rollout", "copd")}
    assert expected <= sides
    try:
        import trl  # noqa: F401
    except ImportError:
        assert "trl is not installed" in out.stdout
    else:
        assert {("tiny", "grpo_step", "trl"), ("tiny", "rollout", "trl")} <= sides
    assert any("copd step time ÷ stock-transformers baseline" in line for line in lines)


def test_lean_decoder_matches_transformers():
    """The lean forward/sampler (trainer.rollout.LeanDecoder) gives transformers' logits, tokens and logprobs."""
    import torch

    from bench.common import workload
    from trainer.algos import token_logprobs
    from trainer.rollout import HFEngine, LeanDecoder, forward_logits, position_ids_from_mask

    wl = workload("tiny")
    model = wl.model()
    engine = HFEngine(model, wl.tokenizer)
    prompts = ["1+2=", "75+15=", "#o.o./o##.o/o...#/o#.#.|c?"]            # different widths: left padding
    torch.manual_seed(0)
    roll = engine.sample(prompts, 3, temperature=1.0, max_new_tokens=8)
    b = roll.tokens
    ids = torch.cat([b.prompt_ids, b.completion_ids], 1)
    attn = torch.cat([b.prompt_mask, torch.ones_like(b.completion_ids)], 1)
    p, t = b.prompt_ids.shape[1], b.completion_ids.shape[1]
    ref = model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn)).logits[:, p - 1: p + t - 1]
    assert torch.allclose(forward_logits(model, b), ref, atol=1e-5)
    assert (roll.logp - token_logprobs(ref, b.completion_ids) * b.completion_mask).abs().max() < 1e-5
    greedy = engine.sample(prompts, 1, temperature=1.0, max_new_tokens=8, greedy=True)
    LeanDecoder.enabled = False
    try:
        reference = engine.sample(prompts, 1, temperature=1.0, max_new_tokens=8, greedy=True)
    finally:
        LeanDecoder.enabled = True
    assert torch.equal(greedy.tokens.completion_ids, reference.tokens.completion_ids)


def test_real_size_bench_smoke_prints_its_table():
    """`python -m bench.real_size --smoke` (tiny sizes of the real-size bench) runs end to end; no timings checked."""
    env = {**os.environ, "COPD_TORCH_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "bench.real_size", "--smoke", "--only", "grpo"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {tuple(c.strip() for c in line.split("|")[1:3]) for line in out.stdout.splitlines() if line.startswith("| grpo |")}
    assert {("grpo", "copd"), ("grpo", "copd_whole")} <= rows
    assert any(line.startswith("- GRPO: copd step time ÷ TRL's") for line in out.stdout.splitlines())

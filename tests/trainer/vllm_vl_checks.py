"""VllmEngine on builtin:tiny-vl with images as `multi_modal_data`: run INSIDE the vLLM venv.

    VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 \\
        .venv-vllm/bin/python -m pytest -q tests/trainer/vllm_vl_checks.py -p no:cacheprovider

Not collected by the main suite; tests/trainer/test_vllm_engine.py runs it in a subprocess when the venv
exists. The sampler (vLLM, with the prompt's images) against the trainer (`visual_forward`, with the
prompt's pixels) on the shipped tiny VLM: image prompts, video frames, text prompts. Where torchvision is
missing, vllm_torchvision_standin.py stands in for the parts of it vLLM's Qwen2-VL path imports.
"""

from __future__ import annotations

import os
import shutil

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("vllm")

from tests.trainer import vllm_torchvision_standin  # noqa: E402

vllm_torchvision_standin.install()

from trainer.domains import load_domain  # noqa: E402
from trainer.models import load_pretrained  # noqa: E402
from trainer.rollout import HFEngine, completion_mask  # noqa: E402
from trainer.tiny_vl import SHIPPED_VL_BASE  # noqa: E402
from trainer.vlm import VisualTokenBatch, encode_visual, sample_visual  # noqa: E402
from trainer.vllm_engine import VllmEngine  # noqa: E402

TOL = 1e-4  # as vllm_checks.py (text)


def _prompts(domain: str, k: int, start: int = 0) -> list:
    return [s.model_input for s in load_domain(domain, 0).train[start:start + k]]


def _gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(live model, processor, VllmEngine, HFEngine, folder) on a copy of the shipped tiny VLM."""
    folder = tmp_path_factory.mktemp("vllm-vl") / "model"
    shutil.copytree(SHIPPED_VL_BASE, folder)
    model, proc = load_pretrained(str(folder))
    engine = VllmEngine(model, proc, folder=folder, seed=0)
    yield model, proc, engine, HFEngine(model, proc), folder
    engine.close()


# image prompts, a video's frames (3-4 images a prompt), text prompts, and all three in one batch
MIXES = {"image": [("builtin:shapes", 6)], "video": [("builtin:motion", 5)], "text": [("builtin:arith", 5)],
         "mixed": [("builtin:shapes", 2), ("builtin:arith", 2), ("builtin:motion", 2)]}


def _mix(name: str) -> list:
    return [p for domain, k in MIXES[name] for p in _prompts(domain, k, start=7)]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("mix", list(MIXES))
def test_sampled_logprobs_match_trainer(setup, mix, temperature):
    model, proc, engine, hf, _ = setup
    roll = engine.sample(_mix(mix), 4, temperature=temperature, max_new_tokens=6)
    assert isinstance(roll.tokens, VisualTokenBatch)
    ref = hf.logprobs(roll.tokens, temperature=temperature)      # token_stats → visual_forward, with the pixels
    gap = _gap(roll.logp, ref)
    print(f"{mix} T={temperature}: sampler/trainer logp gap {gap:.3e} over {roll.completion_tokens} tokens")
    assert roll.completion_tokens > 0 and gap < TOL


def test_layout(setup):
    """The rollout is what sample_visual gives: prompts as encode_visual, the G rows sharing one prompt's images."""
    model, proc, engine, hf, _ = setup
    prompts, n = _mix("mixed"), 3
    roll = engine.sample(prompts, n, temperature=1.0, max_new_tokens=6)
    b = roll.tokens
    ids, mask, visual = encode_visual(proc, prompts)
    assert torch.equal(b.prompt_ids, ids.repeat_interleave(n, 0)) and torch.equal(b.prompt_mask, mask.repeat_interleave(n, 0))
    assert torch.equal(b.row_prompt, torch.arange(len(prompts)).repeat_interleave(n))
    assert torch.equal(b.visual.pixel_values, visual.pixel_values) and torch.equal(b.visual.image_grid_thw, visual.image_grid_thw)
    assert b.visual.images_per_prompt.tolist() == [1, 1, 0, 0, *visual.images_per_prompt[4:].tolist()]
    assert min(visual.images_per_prompt[4:].tolist()) >= 3          # a video's frames
    assert torch.equal(b.completion_mask, completion_mask(b.completion_ids, proc.eos_token_id))
    assert roll.prompt_index == [i for i in range(len(prompts)) for _ in range(n)]
    for i in range(b.size):
        k = int(b.completion_mask[i].sum())
        assert roll.texts[i] == proc.tokenizer.decode(b.completion_ids[i, :k], skip_special_tokens=True)
        # a token the model is sure of has logprob 0.0 in float32 (the trained base is sure of many)
        assert bool((roll.logp[i, k:] == 0).all()) and bool((roll.logp[i, :k] <= 0).all())
    assert float((roll.logp[b.completion_mask.bool()] < 0).float().mean()) > 0.5   # real logprobs, not zeros


def test_greedy_matches_trainer_sampler(setup):
    model, proc, engine, hf, _ = setup
    prompts = _mix("mixed")
    got = engine.sample(prompts, 1, temperature=1.0, max_new_tokens=6, greedy=True)
    ref = sample_visual(model, proc, prompts, 1, temperature=1.0, max_new_tokens=6, greedy=True)
    assert torch.equal(got.tokens.completion_ids, ref.tokens.completion_ids)
    assert got.texts == ref.texts and _gap(got.logp, ref.logp) < TOL


def test_scoring_text_rows_and_refusing_pixels(setup):
    """logprobs: a VLM's text-only rows are rescored by vLLM; rows with pixels are refused (HFEngine scores them)."""
    model, proc, engine, hf, _ = setup
    text = engine.sample(_mix("text"), 2, temperature=1.0, max_new_tokens=6)
    assert text.tokens.visual.pixel_values is None
    assert _gap(engine.logprobs(text.tokens), hf.logprobs(text.tokens)) < TOL
    image = engine.sample(_mix("image"), 2, temperature=1.0, max_new_tokens=4)
    with pytest.raises(NotImplementedError):
        engine.logprobs(image.tokens)


def test_sync_weights_vision_tower(setup):
    """Change only the vision tower and projector: vLLM follows after sync_weights, with no disk read and no
    stale image embeddings (the same images were encoded before the change)."""
    model, proc, engine, hf, folder = setup
    prompts = _mix("image")
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    vision = {k: p for k, p in model.named_parameters() if ".visual." in f".{k}"}
    assert any("merger" in k for k in vision) and len(vision) > 10      # the projector is in model.visual
    engine.sample(prompts, 2, temperature=1.0, max_new_tokens=4)         # these images now encoded once
    torch.manual_seed(0)
    with torch.no_grad():
        for p in vision.values():
            p.add_(torch.randn_like(p) * 3 * p.std().clamp_min(1e-2))
    stale = engine.sample(prompts, 2, temperature=1.0, max_new_tokens=4)
    stale_gap = _gap(stale.logp, hf.logprobs(stale.tokens))
    moved = folder.with_name("moved")
    shutil.move(folder, moved)                                           # nothing may be read from disk
    try:
        engine.sync_weights()
        after = engine.sample(prompts, 2, temperature=1.0, max_new_tokens=4)
        gap = _gap(after.logp, hf.logprobs(after.tokens))
        print(f"vision tower changed: gap before sync {stale_gap:.3e}, after {gap:.3e}")
        assert stale_gap > 100 * TOL and gap < TOL
    finally:
        model.load_state_dict(saved)
        engine.sync_weights()
        shutil.move(moved, folder)
    back = engine.sample(prompts, 2, temperature=1.0, max_new_tokens=4)
    assert _gap(back.logp, hf.logprobs(back.tokens)) < TOL

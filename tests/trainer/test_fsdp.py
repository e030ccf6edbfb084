"""FSDP on the CPU (gloo, 2 processes): the sharded update equals the one-process update; a launched unit reports.

The ranks run `python -m torch.distributed.run … -m tests.trainer.test_fsdp grad DIR` (the worker at the bottom
of this file) or `trainer.dist_unit` (through `trainer.distributed.launch`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from trainer import distributed as D
from trainer.algos import grpo_advantages, opd_advantages, token_logprobs
from trainer.rollout import Rollout, TokenBatch, completion_mask, forward_logits
from trainer.spec import GrpoSpec, TinyModelSpec
from trainer.update import CrossBatch, NativeBatch, update_step

GROUP, PER_PROMPT = 4, 2       # native: 2 prompts × 4 samples; cross: 4 prompts × 2 samples (8 rows each)
CLIPS = (1e9, 0.05)            # step 1 without gradient clipping, step 2 with it (it bites: norms are ~1)


# -- the synthetic batches ------------------------------------------------------------------------
def _rollout(model, n: int, per_prompt: int, gen: torch.Generator, vocab: int, eos: int) -> Rollout:
    p, t = 5, 6
    prompt = torch.randint(4, vocab, (n // per_prompt, p), generator=gen).repeat_interleave(per_prompt, 0)
    pmask = torch.ones_like(prompt)
    pmask[::3, :2] = 0                                              # some left padding
    prompt = prompt * pmask
    comp = torch.randint(4, vocab, (n, t), generator=gen)
    comp[1::2, 3] = eos                                             # some rows stop early
    tokens = TokenBatch(prompt, pmask, comp, completion_mask(comp, eos))
    with torch.no_grad():
        logp = token_logprobs(forward_logits(model, tokens), comp, 1.0)
    logp = (logp + 0.1 * torch.randn(logp.shape, generator=gen)) * tokens.completion_mask  # an older policy's
    return Rollout(tokens, logp, [""] * n, [i // per_prompt for i in range(n)])


def make_batches(model, vocab: int, eos: int) -> tuple[NativeBatch, CrossBatch]:
    gen = torch.Generator().manual_seed(0)
    nroll = _rollout(model, 8, GROUP, gen, vocab, eos)
    rewards = torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 1])
    ref = nroll.logp + 0.05 * torch.randn(nroll.logp.shape, generator=gen)
    native = NativeBatch(nroll, rewards, grpo_advantages(rewards, GROUP), ref)
    croll = _rollout(model, 8, PER_PROMPT, gen, vocab, eos)
    t_logp = croll.logp + 0.3 * torch.randn(croll.logp.shape, generator=gen)
    cross = CrossBatch("peer", croll, t_logp, opd_advantages(t_logp, croll.logp, croll.tokens.completion_mask, 0.5), 0.7)
    if "beta" in CrossBatch.__dataclass_fields__:
        cross = replace(cross, beta=0.5)
    return native, cross


def _rows(roll: Rollout, idx: list[int]) -> Rollout:
    i = torch.tensor(idx)
    return Rollout(roll.tokens.select(i), roll.logp[i], [roll.texts[j] for j in idx], [roll.prompt_index[j] for j in idx])


def rank_share(native: NativeBatch, cross: CrossBatch, d: D.Dist) -> tuple[NativeBatch, CrossBatch]:
    """The rows of this rank's prompts (D.share over the prompt list), as a rank samples them in a unit."""
    def rows(n: int, per: int) -> list[int]:
        return [p * per + k for p in D.share(list(range(n // per)), d) for k in range(per)]

    ni, ci = rows(8, GROUP), rows(8, PER_PROMPT)
    nb = NativeBatch(_rows(native.rollout, ni), native.rewards[ni], native.advantages[ni], native.ref_logp[ni])
    cb = replace(cross, rollout=_rows(cross.rollout, ci), teacher_logp=cross.teacher_logp[ci],
                 advantages=cross.advantages[ci])
    return nb, cb


class Recording(torch.optim.AdamW):
    """AdamW that keeps the (clipped) gradients it steps with, whole (gathered from the shards)."""

    grads: list[dict[str, torch.Tensor]]

    def step(self, closure=None):
        grads = {}
        for name, p in self.named:
            g = p.grad
            grads[name] = (g.full_tensor() if hasattr(g, "full_tensor") else g).detach().clone()
        self.grads.append(grads)
        return super().step(closure)


def two_steps(model, native, cross, full) -> dict:
    """Two update steps (unclipped, then clipped); the gradients, metrics, parameters and optimizer state."""
    # eps 1e-6, not AdamW's 1e-8: with gradients of ~1e-9 (there are some) Adam's g / (|g| + eps) turns float
    # rounding differences of the gradient (~1e-11, summation order) into update differences of up to lr · 1e-2
    opt = Recording(model.parameters(), lr=1e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0)
    opt.named, opt.grads = list(model.named_parameters()), []
    metrics = []
    for clip in CLIPS:
        grpo = GrpoSpec(group_size=GROUP, kl_coef=0.1, grad_clip=clip)
        metrics.append(update_step(model, opt, native, [cross], grpo, 1e-2))
    params = full(model)
    return {"grads": opt.grads, "metrics": metrics, "params": params,
            "optim": D.full_optimizer_state(model, opt) if full is not _plain else opt.state_dict()}


def _plain(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# -- the worker (each rank) -----------------------------------------------------------------------
def grad_worker(folder: Path) -> None:
    from trainer.models import load_pretrained

    d = D.init()
    model, _ = load_pretrained(str(folder / "model"))
    native, cross = torch.load(folder / "batches.pt", weights_only=False)
    model = D.shard(model, d)
    nb, cb = rank_share(native, cross, d)
    out = two_steps(model, nb, cb, D.full_state_dict)
    out["metrics"] = [D.reduce_metrics(m, d) for m in out["metrics"]]
    if d.main:
        torch.save(out, folder / "fsdp.pt")
    D.close()
    D.hard_exit(0)


# -- tests ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    from trainer.models import build_char_tokenizer, build_tiny_model

    folder = tmp_path_factory.mktemp("fsdp")
    tok = build_char_tokenizer(set("0123456789+=abcdefgh"))
    model = build_tiny_model(TinyModelSpec(hidden_size=32, layers=2, heads=2, kv_heads=1, intermediate_size=64), tok, 0)
    model.save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    return folder


def test_sharded_update_equals_one_process(tiny_folder, capsys):
    from trainer.models import load_pretrained

    model, tok = load_pretrained(str(tiny_folder / "model"))
    native, cross = make_batches(model, len(tok), tok.eos_token_id)
    torch.save((native, cross), tiny_folder / "batches.pt")
    t0 = time.time()
    proc = subprocess.run(D.command(tiny_folder, 2)[:-3] + ["-m", "tests.trainer.test_fsdp", "grad", str(tiny_folder)],
                          env=D.child_env(), capture_output=True, text=True, timeout=300)
    took = time.time() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ref = two_steps(model, native, cross, _plain)   # one process, all 8 + 8 rows
    got = torch.load(tiny_folder / "fsdp.pt", weights_only=False)

    gaps = []
    for step, (g1, g2) in enumerate(zip(ref["grads"], got["grads"])):
        assert g1.keys() == g2.keys()
        gap = max(float((g1[k] - g2[k]).abs().max()) for k in g1)
        scale = max(float(g1[k].abs().max()) for k in g1)
        gaps.append(gap)
        assert gap < 1e-5, f"step {step + 1}: gradient gap {gap:.2e} (largest gradient {scale:.2e})"
    for m1, m2 in zip(ref["metrics"], got["metrics"]):
        for key in ("loss/grpo", "loss/opd", "grad_norm", "grpo/kl_ref", "reward/mean", "opd/kl"):
            assert m1[key] == pytest.approx(m2[key], rel=1e-5, abs=1e-6), key
        assert m1["cost/train_tokens"] == m2["cost/train_tokens"]
    assert ref["metrics"][1]["grad_norm"] > CLIPS[1]    # the second step really clipped
    p_gap = max(float((ref["params"][k] - got["params"][k]).abs().max()) for k in ref["params"])
    # the one process runs each prompt once over its uneven runs of rows (rollout.prompt_runs), the ranks through
    # transformers row by row: gradients agree to ~1e-7, which Adam's g / (|g| + eps) turns into ~2e-5 here
    assert p_gap < 5e-5
    # the gathered optimizer state is the one-process state_dict (optimizer.pt stays interchangeable)
    o1, o2 = ref["optim"], got["optim"]
    assert sorted(o1["state"]) == sorted(o2["state"]) and o1["param_groups"][0]["params"] == o2["param_groups"][0]["params"]
    o_gap = max(float((o1["state"][i][k] - o2["state"][i][k]).abs().max()) for i in o1["state"] for k in ("exp_avg", "exp_avg_sq"))
    assert o_gap < 1e-6
    with capsys.disabled():
        print(f"\n[fsdp] 2 ranks vs 1 process: max gradient gap {gaps[0]:.1e} (unclipped), {gaps[1]:.1e} (clipped); "
              f"parameters after 2 steps {p_gap:.1e}; Adam moments {o_gap:.1e}; ranks took {took:.1f}s")


class Recorder:
    """A Reporter that keeps every call (knob version 1 from the start, lr changed)."""

    def __init__(self, knobs, stop: bool = False):
        self.calls: list[tuple] = []
        self._knobs, self._stop = knobs, stop

    def metrics(self, *a):
        self.calls.append(("metrics", *a))

    def checkpoint(self, info):
        self.calls.append(("checkpoint", info))

    def event(self, message, *, level="info", expert=None):
        self.calls.append(("event", message))

    def knobs(self):
        return 1, self._knobs

    def knobs_applied(self, *a):
        self.calls.append(("knobs_applied", *a))

    def progress(self, *a):
        self.calls.append(("progress", *a))

    def should_stop(self):
        return self._stop


def test_launch_runs_a_phase_two_unit_on_two_ranks(tmp_path, model_cache, capsys):
    from tests.trainer.conftest import tiny_spec
    from trainer.checkpoint import read_state, verify_checkpoint
    from trainer.models import load_pretrained
    from trainer.reporter import JsonlReporter
    from trainer.schedule import Unit
    from trainer.spec import knobs_from_spec
    from trainer.units import RunContext, run_unit

    spec = tiny_spec(schedule={"cycles": 1, "rl_steps": 1, "opd_steps": 2})
    ctx = RunContext.create(spec, tmp_path / "run", model_cache, log_fn=lambda m: None)
    jsonl = JsonlReporter(tmp_path / "run", knobs_from_spec(spec))
    for e in spec.expert_names:  # Phase I in this process: the inputs and teachers of Phase II
        run_unit(ctx, Unit(1, "rl", e), jsonl)
    rec = Recorder({**knobs_from_spec(spec), "lr": 5e-4})
    unit = Unit(1, "opd", "image")
    t0 = time.time()
    info = D.launch(ctx, unit, rec, 2)
    took = time.time() - t0

    metrics = [c for c in rec.calls if c[0] == "metrics"]
    assert [m[3] for m in metrics] == [2, 3]                      # steps continue from the Phase I checkpoint
    for _, expert, cycle, _, values in metrics:
        assert expert == "image" and cycle == 1
        assert values["fsdp/ranks"] == 2 and values["lr"] == 5e-4
        assert {"loss/grpo", "loss/opd", "opd/kl/video", "reward/mean", "grad_norm"} <= set(values)
        assert all(v == v for v in values.values())               # no NaN
    assert [c[1:] for c in rec.calls if c[0] == "knobs_applied"] == [(1, 1, 2), (1, 1, 3)]
    assert [c[2:4] for c in rec.calls if c[0] == "progress"] == [(1, 2), (2, 2)]
    assert any("2 FSDP ranks" in c[1] for c in rec.calls if c[0] == "event")
    assert [c[1] for c in rec.calls if c[0] == "checkpoint"] == [info]
    out = ctx.layout.unit_output(unit)
    assert info.uri == str(out) and info.step == 3 and verify_checkpoint(out)
    assert read_state(out) == {"step": 3, "cycle": 1, "phase": "opd", "expert": "image", "knobs_version": 1}
    model, _ = load_pretrained(str(out))                            # reloads as a plain HF model …
    before, _ = load_pretrained(str(ctx.layout.unit_input(unit)))
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), before.state_dict().values()))
    opt = torch.optim.AdamW(model.parameters())                   # … with its one-process optimizer state
    opt.load_state_dict(torch.load(out / "optimizer.pt", weights_only=True))
    assert int(opt.state_dict()["state"][0]["step"]) == 3          # 1 Phase I step + 2 here
    with capsys.disabled():
        print(f"\n[fsdp] launched c1/opd/image on 2 ranks, 2 steps: {took:.1f}s")


def test_launch_reports_a_failing_child_and_a_cancel(tmp_path, model_cache):
    from tests.trainer.conftest import tiny_spec
    from trainer.schedule import Unit
    from trainer.spec import knobs_from_spec
    from trainer.units import Cancelled, RunContext

    spec = tiny_spec()
    ctx = RunContext.create(spec, tmp_path / "run", model_cache, log_fn=lambda m: None)
    with pytest.raises(D.DistributedError, match="c1-rl"):  # Phase I never ran: no input checkpoint
        D.launch(ctx, Unit(1, "opd", "image"), Recorder(knobs_from_spec(spec)), 2)
    with pytest.raises(Cancelled):                               # a cancelled run stops before loading anything
        D.launch(ctx, Unit(1, "opd", "image"), Recorder(knobs_from_spec(spec), stop=True), 2)
    with pytest.raises(ValueError, match="multiples"):
        D.launch(ctx, Unit(1, "opd", "image"), Recorder(knobs_from_spec(spec)), 3)


if __name__ == "__main__" and sys.argv[1:2] == ["grad"]:
    grad_worker(Path(sys.argv[2]))

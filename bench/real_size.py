"""copd vs TRL at a real vocabulary and real lengths: a GRPO step and a Phase II step with 2 live teachers.

    python -m bench.real_size                       # CPU: 2 prompts × G 8, prompts 128, completions ≤ 512
    python -m bench.real_size --prompts 8 --repeats 5          # a GPU (device auto), the same code
    python -m bench.real_size --smoke               # tiny sizes, one round, no memory (CI)

The model is a random Qwen2 with Qwen's 151,936-token vocabulary and 2 layers of width 64 (so it runs on a
CPU); a character tokenizer padded with filler tokens to that size; prompts of 128 characters (= tokens).
A random model almost never emits one token of 151,936, so the EOS logit is lifted to a hazard of
`--eos-rate` per token (one residual dimension carries a constant that only EOS reads): completion lengths
then spread over 1…max_new_tokens (geometric, ~36 % reaching the cap at the defaults), so long and short
completions share every batch, as in a real run. Every side starts from the same weights.

Sides (timed alternating in one process, medians; peak memory each in its own process):
  grpo    copd: one step as a run takes it (the spec defaults: micro-batches of grpo.micro_batch_tokens,
          only real positions through the head); copd_whole: the same with the whole batch in one
          forward/backward (micro_batch_tokens null); trl: GRPOTrainer stepped by hand (bench/trl_side.py).
  phase2  phase2_2t: the native batch + one cross batch per teacher (2 live teachers score every token);
          plain_grpo_same: a GRPO step on the same prompts and rows, no teacher; trl_same_rows: TRL's GRPO
          step on as many rows (TRL has no mutual-OPD step: this is a lower bound of what a TRL user's
          Phase II would cost, since the teachers' scoring comes on top).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 151_936


@dataclass(frozen=True)
class RealSizes:
    """One step's shape at real sizes."""

    prompts: int = 1            # native prompts per step (a GPU: --prompts 8)
    group: int = 8              # G
    prompt_tokens: int = 128
    max_new_tokens: int = 512
    opd_prompts: int = 1        # per teacher
    opd_samples: int = 8
    eos_rate: float = 1 / 500   # per-token EOS probability of the random model
    vocab: int = VOCAB
    hidden: int = 64
    layers: int = 2


SMOKE = RealSizes(prompts=1, group=2, prompt_tokens=16, max_new_tokens=8, opd_prompts=1, opd_samples=2,
                  eos_rate=0.1, vocab=4096, hidden=32, layers=1)


def device():
    """cuda when a GPU is visible, else cpu (the bench runs unchanged on both)."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def tokenizer(vocab: int):
    """A character tokenizer (each character one token) padded with filler tokens to `vocab` entries."""
    import transformers as T
    from tokenizers import Tokenizer, models, pre_tokenizers

    chars = list("0123456789+-=: ?abcdefghijklmnopqrstuvwxyz")
    words = ["<pad>", "<eos>", *chars, *(f"<t{i}>" for i in range(vocab - len(chars) - 2))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def build_model(sizes: RealSizes, tok):
    """The random Qwen2 of the docstring, with the EOS hazard set; fp32, eval mode, on the CPU."""
    import math

    import torch
    import transformers as T

    cfg = T.Qwen2Config(vocab_size=sizes.vocab, hidden_size=sizes.hidden, intermediate_size=2 * sizes.hidden,
                        num_hidden_layers=sizes.layers, num_attention_heads=4, num_key_value_heads=2,
                        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # dimension 0 of the residual stream: a constant no layer writes, read only by EOS
        model.model.embed_tokens.weight[:, 0] = 1.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0] = 0.0
            layer.mlp.down_proj.weight[0] = 0.0
        model.lm_head.weight[:, 0] = 0.0
        seen = []
        hook = model.lm_head.register_forward_hook(lambda mod, args, out: seen.append((args[0], out)))
        model(input_ids=torch.randint(2, sizes.vocab, (4, 64)))
        hook.remove()
        h, z = seen[0]                                                 # the head's input (normed states), logits
        eos_logit = math.log(sizes.eos_rate / (1 - sizes.eos_rate)) + float(torch.logsumexp(z, -1).mean())
        model.lm_head.weight[tok.eos_token_id, 0] = eos_logit / float(h[..., 0].mean())
    return model


def domain(sizes: RealSizes, n: int = 256):
    """Prompts of `prompt_tokens` characters; reward = 1 for an even-length completion (a reward with variance)."""
    from trainer.domains.base import Domain, Sample

    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    samples = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        tail = f"{a}+{b}="
        body = "".join(rng.choice(letters) for _ in range(sizes.prompt_tokens - len(tail) - 2))
        samples.append(Sample(f"q:{body}{tail}", str(a + b)))
    return Domain("bench:real", tuple(samples), tuple(samples[:8]), lambda c, s: float(len(c) % 2 == 0))


@dataclass
class Setup:
    sizes: RealSizes
    tok: object
    state: dict
    domain: object

    def model(self):
        """A fresh copy of the shared initial weights on the bench's device (fp32, eval mode)."""
        m = build_model(self.sizes, self.tok)
        m.load_state_dict(self.state)
        return m.to(device()).eval()


def setup(sizes: RealSizes) -> Setup:
    tok = tokenizer(sizes.vocab)
    model = build_model(sizes, tok)
    return Setup(sizes, tok, {k: v.clone() for k, v in model.state_dict().items()}, domain(sizes))


# ---- the sides ----------------------------------------------------------------------------------

def _grpo(sizes: RealSizes, **over):
    from contract.spec import GrpoSpec

    return GrpoSpec(group_size=sizes.group, prompts_per_step=sizes.prompts, max_new_tokens=sizes.max_new_tokens,
                    lr=1e-4, kl_coef=0.0, **over)


def _stream(st: Setup, per_step: int, offset: int = 0):
    samples = list(st.domain.train)
    i = offset
    while True:
        start = (i * per_step) % (len(samples) - per_step)
        yield samples[start: start + per_step]
        i += 1


def _perturbed(model, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_((0.02 * torch.randn(p.shape, generator=g)).to(p.device))
    return model


def copd_grpo(st: Setup, whole: bool = False):
    """One copd GRPO step (micro-batches by the spec default, or the whole batch at once)."""
    from bench.sides import TIS_CAP, _adamw
    from trainer.rollout import HFEngine
    from trainer.update import native_batch, update_step

    model = st.model()
    grpo = _grpo(st.sizes, micro_batch_tokens=None) if whole else _grpo(st.sizes)
    engine, opt, stream = HFEngine(model, st.tok), _adamw(model), _stream(st, st.sizes.prompts)

    def step() -> int:
        nb = native_batch(engine, st.domain, next(stream), grpo)
        update_step(model, opt, nb, [], grpo, grpo.lr, tis_cap=TIS_CAP)
        return nb.rollout.completion_tokens
    return step


def copd_phase2(st: Setup, teachers: int = 2, plain: bool = False):
    """A Phase II step with `teachers` live teachers, or (plain) a GRPO step on the same prompts and rows."""
    from contract.spec import OpdSpec
    from bench.sides import TIS_CAP, _adamw
    from trainer.rollout import HFEngine
    from trainer.update import cross_batch, native_batch, update_step

    s = st.sizes
    model, grpo = st.model(), _grpo(s)
    cross_grpo = grpo.model_copy(update={"group_size": s.opd_samples, "prompts_per_step": s.opd_prompts})
    opd = OpdSpec(prompts_per_step=s.opd_prompts, samples_per_prompt=s.opd_samples)
    engine, opt = HFEngine(model, st.tok), _adamw(model)
    live = {} if plain else {f"t{i}": HFEngine(_perturbed(st.model(), i + 1).requires_grad_(False), st.tok)
                             for i in range(teachers)}
    stream = _stream(st, s.prompts)
    cross_streams = [_stream(st, s.opd_prompts, 100 + 37 * i) for i in range(teachers)]

    def step() -> int:
        native = native_batch(engine, st.domain, next(stream), grpo)
        if plain:
            parts = [native] + [native_batch(engine, st.domain, next(cs), cross_grpo) for cs in cross_streams]
            update_step(model, opt, parts, [], grpo, grpo.lr, tis_cap=TIS_CAP)
            return sum(p.rollout.completion_tokens for p in parts)
        cross = [cross_batch(engine, t, live[t], next(cs), grpo, opd, opd.beta, 1.0 / teachers)
                 for t, cs in zip(live, cross_streams)]
        update_step(model, opt, native, cross, grpo, grpo.lr, tis_cap=TIS_CAP)
        return native.rollout.completion_tokens + sum(c.rollout.completion_tokens for c in cross)
    return step


def trl_grpo(st: Setup, rows: int | None = None):
    """TRL's GRPO step on `rows` rows (default: the native batch's), groups of G (bench/trl_side.py)."""
    from bench import trl_side

    s = st.sizes
    rows = rows or s.prompts * s.group
    trainer = trl_side.make_trainer(st.model(), st.tok, [x.prompt for x in st.domain.train], st.domain.score,
                                    rows=rows, group=s.group, max_new_tokens=s.max_new_tokens, lr=1e-4,
                                    on_cpu=device().type == "cpu")
    stream = _stream(st, rows // s.group)
    return trl_side.step_fn(trainer, stream, s.group)


SIDES = {
    ("grpo", "copd"): lambda st: copd_grpo(st),
    ("grpo", "copd_whole"): lambda st: copd_grpo(st, whole=True),
    ("grpo", "trl"): lambda st: trl_grpo(st),
    ("phase2", "plain_grpo_same"): lambda st: copd_phase2(st, plain=True),
    ("phase2", "phase2_2t"): lambda st: copd_phase2(st),
    ("phase2", "trl_same_rows"): lambda st: trl_grpo(st, st.sizes.prompts * st.sizes.group
                                                     + 2 * st.sizes.opd_prompts * st.sizes.opd_samples),
}


# ---- running ------------------------------------------------------------------------------------

def _has_trl() -> bool:
    from bench import trl_side

    return trl_side.available() is not None


def timed(sizes: RealSizes, warmup: int, repeats: int, clock: str, only: set[str], log) -> dict:
    """Median seconds and tokens/s of every side, alternating within each comparison."""
    from bench.common import alternate

    st = setup(sizes)
    out = {}
    for comparison in ("grpo", "phase2"):
        if only and comparison not in only:
            continue
        sides = {side: make(st) for (c, side), make in SIDES.items()
                 if c == comparison and (_has_trl() or not side.startswith("trl"))}
        log(f"{comparison}: {', '.join(sides)} ({warmup} warm-up, {repeats} repeats)")
        for side, t in alternate(sides, warmup, repeats, clock).items():
            out[comparison, side] = (t.median_s, t.tokens_per_s)
            log(f"  {side}: {t.median_s:.2f} s, {t.tokens_per_s:.0f} tokens/s, completion tokens {t.tokens}")
    return out


def memory(sizes: RealSizes, comparison: str, side: str, threads: int, smoke: bool) -> tuple[float, float]:
    """(peak, rise over setup) in MiB of one side alone, in a fresh process (GPU: allocated memory)."""
    args = [sys.executable, "-m", "bench.real_size", "--memory-of", f"{comparison}:{side}", "--threads", str(threads),
            "--sizes", json.dumps(asdict(sizes))] + ["--smoke"] * smoke
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"})
    peak, rise = json.loads(out.stdout.strip().splitlines()[-1])
    return peak, rise


def _memory_child(sizes: RealSizes, which: str) -> None:
    from bench.memory import peak_of

    comparison, side = which.split(":")
    step = SIDES[comparison, side](setup(sizes))
    print(json.dumps(peak_of(step, device(), steps=1)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.real_size", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one round, no memory")
    p.add_argument("--prompts", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--opd-samples", type=int, default=None, help="student samples per teacher prompt (default 8)")
    p.add_argument("--eos-rate", type=float, default=None, help="per-token EOS probability (default 1/500)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    p.add_argument("--only", default="", help="grpo, phase2")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--memory-of", default="", help=argparse.SUPPRESS)
    p.add_argument("--sizes", default="", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    from bench.quiet import quiet_offline

    torch = quiet_offline(a.threads)
    sizes = RealSizes(**json.loads(a.sizes)) if a.sizes else (SMOKE if a.smoke else RealSizes())
    over = {k: v for k, v in (("prompts", a.prompts), ("max_new_tokens", a.max_new_tokens),
                              ("opd_samples", a.opd_samples), ("eos_rate", a.eos_rate)) if v is not None}
    if over:
        from dataclasses import replace

        sizes = replace(sizes, **over)
    if a.memory_of:
        _memory_child(sizes, a.memory_of)
        return 0
    from bench.run import environment

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    print(environment() + f"; device {device()}")
    print(f"sizes: {sizes}")
    if not _has_trl():
        print("note: trl is not installed; the TRL sides are skipped (pip install -e '.[bench]')")
    repeats, warmup = (1, 0) if a.smoke else (a.repeats, a.warmup)
    only = set(filter(None, a.only.split(",")))
    times = timed(sizes, warmup, repeats, a.clock, only, log)
    with_memory = a.memory if a.memory is not None else not a.smoke
    print("| comparison | side | median s | tokens/s | time ratio | peak MiB | step Δ MiB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    mem = {}
    for (comparison, side), (sec, tps) in times.items():
        ref = times[comparison, "copd" if comparison == "grpo" else "phase2_2t"][0]
        if with_memory:
            log(f"memory: {comparison} {side}")
            mem[comparison, side] = memory(sizes, comparison, side, a.threads, a.smoke)
        m = mem.get((comparison, side))
        print(f"| {comparison} | {side} | {sec:.2f} | {tps:.0f} | {sec / ref:.2f}× | "
              + (f"{m[0]:.0f} | {m[1]:.0f} |" if m else "— | — |"))
    print()
    for line in ratios(times, mem):
        print("- " + line)
    return 0


def ratios(times: dict, mem: dict) -> list[str]:
    """The issue's targets, as measured."""
    out = []

    def r(d, num, den, i=0):
        return f"{d[num][i] / d[den][i]:.2f}" if num in d and den in d else "n/a"

    out.append(f"GRPO: copd step time ÷ TRL's = {r(times, ('grpo', 'copd'), ('grpo', 'trl'))} (target ≤ 0.5); "
               f"whole batch at once ÷ TRL's = {r(times, ('grpo', 'copd_whole'), ('grpo', 'trl'))}")
    out.append(f"Phase II (2 teachers): copd step time ÷ TRL's GRPO on as many rows = "
               f"{r(times, ('phase2', 'phase2_2t'), ('phase2', 'trl_same_rows'))} (target ≤ 0.5)")
    out.append(f"Phase II ÷ plain GRPO on the same rows = {r(times, ('phase2', 'phase2_2t'), ('phase2', 'plain_grpo_same'))}"
               " (target ≤ 1.15)")
    if mem:
        out.append(f"peak memory, GRPO: copd ÷ TRL = {r(mem, ('grpo', 'copd'), ('grpo', 'trl'))}; step rise copd ÷ TRL = "
                   f"{r(mem, ('grpo', 'copd'), ('grpo', 'trl'), 1)} (target ≤ 0.5)")
        out.append(f"peak memory, Phase II: copd ÷ TRL (same rows) = "
                   f"{r(mem, ('phase2', 'phase2_2t'), ('phase2', 'trl_same_rows'))}; step rise = "
                   f"{r(mem, ('phase2', 'phase2_2t'), ('phase2', 'trl_same_rows'), 1)} (target ≤ 0.5)")
    return out


if __name__ == "__main__":
    raise SystemExit(main())

"""Base models: `builtin:tiny` (built from a config, warm-started offline, cached) or any HF model."""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from dataclasses import replace
from typing import Any, Callable, Sequence

import torch
from filelock import FileLock
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from trainer import provenance
from trainer.domains.base import Domain, DomainError, Sample
from trainer.rollout import HFEngine
from contract.spec import TinyModelSpec

log = logging.getLogger(__name__)
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
WARMSTART_VERSION = 6  # bump when the warm-start recipe changes, so cached models are rebuilt
# Share of a builtin domain's warm-start answers replaced by its habit (Domain.habit, a systematic mistake).
# Above 1/2, so the base model's greedy answer is mostly the habit while sampling still finds the right one.
HABIT_SHARE = 0.6
WARM_POOL = 60_000  # fresh warm-start samples per builtin domain (more than its 4000 train prompts: less memorising)
CHECK_EVERY = 25  # warm-start steps between two probes of the sampled accuracy
PROBE_PROMPTS = 64  # train prompts per domain in a probe
# The warm-started base model of the builtin domains, built once by scripts/build-tiny-base.py and shipped.
SHIPPED_BASE = Path(__file__).parent / "assets" / "tiny-base"


def configure_torch(base_model: str = "") -> None:
    """Set torch's intra-op threads: COPD_TORCH_THREADS if given, else 1 for `builtin:tiny`.

    A tiny model's ops are too small to gain from threads, and on a loaded machine spinning OpenMP
    threads that compete for the same cores slowed a warm-start step ~10x (2.6 s vs 0.25 s measured
    here with 2 threads vs 1 on 2 busy cores). Real models keep torch's default (all cores).
    """
    threads = os.environ.get("COPD_TORCH_THREADS", "")
    tiny = base_model in ("builtin:tiny", "builtin:tiny-vl")
    n = int(threads) if threads.isdigit() and int(threads) > 0 else (1 if tiny else 0)
    if n and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def build_char_tokenizer(alphabet: set[str]) -> PreTrainedTokenizerFast:
    """A character-level tokenizer over `alphabet` (BOS prepended, left padding)."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(alphabet):
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one token per character
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="left")


def build_tiny_model(recipe: TinyModelSpec, tokenizer, seed: int):
    """A randomly initialised small decoder from a transformers config."""
    from transformers import LlamaConfig, Qwen2Config

    cfg_cls = Qwen2Config if recipe.arch == "qwen2" else LlamaConfig
    config = cfg_cls(
        vocab_size=len(tokenizer), hidden_size=recipe.hidden_size, num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads, num_key_value_heads=recipe.kv_heads,
        intermediate_size=recipe.intermediate_size, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


class WarmStartError(DomainError):
    """The warm start cannot give a base model in the band for these domains; one line naming what to change."""


def domain_fingerprint(domains: Sequence[Domain]) -> str:
    """Hash of what the warm start trains on: a builtin domain's name (its samples are drawn afresh from the
    generator, whose code `warmstart_code_hash` covers), another domain's train split (so a changed jsonl file
    rebuilds the tiny model)."""
    from trainer.domains import DRAWS

    h = hashlib.sha256()
    for d in domains:
        h.update(d.key.encode() + b"\2")
        if d.key in DRAWS:
            continue
        for s in d.train:
            h.update(s.prompt.encode() + b"\0" + s.answer.encode() + b"\1")
    return h.hexdigest()


# The code that turns a recipe and domains into a base model: these functions and constants, and the modules
# of the domains (their generators, habits and verifiers). Its hash is part of the cache key.
_WARMSTART_CODE = ("build_char_tokenizer", "build_tiny_model", "_sft_batch", "sampled_accuracy", "warm_start",
                   "_warm_data", "_with_habit", "_alphabet")
_WARMSTART_CONSTANTS = ("HABIT_SHARE", "WARM_POOL", "CHECK_EVERY", "PROBE_PROMPTS", "SPECIALS")
_DOMAIN_SUPPORT = ("trainer.domains", "trainer.domains.base", "trainer.domains.verifiers")


def _code_digest(source: str) -> str:
    """The AST of `source` without docstrings, dumped: comments, docstrings and layout do not change it."""
    tree = ast.parse(inspect.cleandoc(source) if source.startswith((" ", "\t")) else source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False)


def _domain_module(key: str) -> str:
    """The module that builds the domain `key`."""
    from trainer.domains import BUILTINS

    if key in BUILTINS:
        build = BUILTINS[key]
        return getattr(build, "func", build).__module__
    return "trainer.domains." + ("jsonl" if key.startswith("jsonl:") else "dataset")


def warmstart_code_hash(keys: Sequence[str]) -> str:
    """Hash of the code that builds the tiny base model for the domains `keys` (ignoring comments and
    docstrings): the warm start here and the domains' modules. A changed generator, habit or warm start gives
    another hash, so a cached model is rebuilt and a stale shipped one is not used."""
    h = hashlib.sha256()
    this = globals()
    for name in _WARMSTART_CODE:
        h.update(_code_digest(inspect.getsource(this[name])).encode())
    h.update(repr([this[name] for name in _WARMSTART_CONSTANTS]).encode())
    for mod in sorted({*_DOMAIN_SUPPORT, *(_domain_module(k) for k in keys)}):
        h.update(mod.encode() + _code_digest(inspect.getsource(importlib.import_module(mod))).encode())
    return h.hexdigest()[:16]


def build_versions() -> dict[str, str]:
    """The library versions a warm start's numbers depend on (float rounding differs between them)."""
    v = provenance.versions()
    return {k: v[k] for k in ("torch", "transformers", "tokenizers")}


def tiny_recipe_hash(recipe: TinyModelSpec, domains: Sequence[Domain], seed: int | None = None) -> str:
    """Cache key of a warm-started tiny model: the recipe (its `seed` included), the data, the code that builds
    it and the library versions. The run's seed is not part of it (`seed` is accepted and ignored), so runs of
    many seeds share one base model; a non-builtin domain's train split, which the run's seed draws, is."""
    payload = json.dumps({"recipe": recipe.model_dump(), "data": domain_fingerprint(domains),
                          "code": warmstart_code_hash([d.key for d in domains]), "versions": build_versions(),
                          "v": WARMSTART_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _sft_batch(tokenizer, samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prompt‖answer‖EOS ids, attention mask, and labels (-100 except on answer + EOS)."""
    rows, labels = [], []
    for s in samples:
        p = tokenizer(s.prompt)["input_ids"]
        a = tokenizer(s.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    lab = torch.full((len(rows), width), -100)
    for i, (r, l) in enumerate(zip(rows, labels)):
        ids[i, : len(r)] = torch.tensor(r)
        lab[i, : len(l)] = torch.tensor(l)
    mask = (lab != -100) | (torch.arange(width) < torch.tensor([len(r) for r in rows])[:, None])
    return ids, mask.long(), lab


def sampled_accuracy(engine: HFEngine, domain: Domain, samples: Sequence[Sample], max_new_tokens: int) -> float:
    """Share of samples answered right, one completion each at temperature 1."""
    roll = engine.sample([s.model_input for s in samples], 1, temperature=1.0, max_new_tokens=max_new_tokens)
    return sum(domain.score(t, s) for t, s in zip(roll.texts, samples)) / len(samples)


def warm_start(model, tokenizer, domains: Sequence[Domain], recipe: TinyModelSpec, seed: int,
               on_check: Callable[[int, list[float]], None] | None = None,
               data: Sequence[Sequence[Sample]] | None = None,
               sft_loss: Callable[[Any, Any, Sequence[Sample]], torch.Tensor] | None = None,
               after: list[float] | None = None) -> list[float]:
    """Supervised pass over the domains' train data until each sits in [target_low, target_high] (sampled
    accuracy on train prompts, probed every CHECK_EVERY steps); returns the last probe's accuracies, which
    are all in the band unless the run stopped at `warmstart_max_steps` (`in_band` tells). `sft_loss`
    replaces the text-only loss (prompts with images: trainer/tiny_vl.py).

    A domain whose sampled accuracy passes ~0.35, or that is in the band while another is still below it,
    pauses its batches (and resumes below target_low): the fast learners wait for the slow ones instead of
    racing to 100% (RLVR needs mixed groups), and the batch goes to the laggards.

    Once in the band, `recipe.warmstart_habit_steps` more steps (within `warmstart_max_steps` in all) train
    the domains with a habit, equally mixed; a domain without one keeps the band's rule there (it trains
    while below target_low, else rests: it would race to 100%, or, resting for good, forget — a conflicting
    domain drops to 0 in a few hundred steps). A paused domain keeps `recipe.warmstart_rehearsal` of a full
    share of the batch (0: it rests). In the band a model has only begun to learn a skill, and
    with a habit its right answers stay near 1 − HABIT_SHARE however well it learns, so the band cannot tell a
    model that guesses from one that knows: the extra steps make it know (measured: docs/results/demo.md).
    Returns the band's accuracies (`in_band` judges the band phase); the habit phase's last probe goes to
    `on_check` and `after`.
    """
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.warmstart_lr, weight_decay=0.0)
    pause_above = min(recipe.target_high, (recipe.target_low + recipe.target_high) / 2 + 0.01)
    active = [True] * len(domains)
    accs = [0.0] * len(domains)
    engine = HFEngine(model, tokenizer)
    if data is None:
        data = [_warm_data(d, seed, recipe.warmstart_max_steps * recipe.warmstart_batch) for d in domains]
    max_ans = max(len(s.answer) for part in data for s in part[:200]) + 2

    def train_step(pool: Sequence[int]) -> None:
        rest = [i for i in range(len(domains)) if i not in pool] if recipe.warmstart_rehearsal else []
        per = max(1, int(recipe.warmstart_batch / (len(pool) + recipe.warmstart_rehearsal * len(rest))))
        shares = [(i, per) for i in pool] + [(i, max(1, round(per * recipe.warmstart_rehearsal))) for i in rest]
        batch = [_with_habit(domains[i], s, rng) for i, n in shares for s in rng.sample(data[i], min(n, len(data[i])))]
        if sft_loss is not None:  # e.g. prompts with images (trainer/tiny_vl.py)
            loss = sft_loss(model, tokenizer, batch)
        else:
            ids, mask, lab = _sft_batch(tokenizer, batch)
            loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def probe_all() -> list[float]:
        probe = [rng.sample(part, min(PROBE_PROMPTS, len(part))) for part in data]
        out = [sampled_accuracy(engine, d, p, max_ans) for d, p in zip(domains, probe)]
        model.train()
        return out

    model.train()
    step = 0
    for step in range(1, recipe.warmstart_max_steps + 1):
        train_step([i for i, a in enumerate(active) if a] or list(range(len(domains))))
        if step % CHECK_EVERY:
            continue
        accs = probe_all()
        if on_check:
            on_check(step, accs)
        lagging = any(a < recipe.target_low for a in accs)
        for i, a in enumerate(accs):
            if a < recipe.target_low:
                active[i] = True
            elif a > pause_above or lagging:  # in the band: give the batch to the domains still below it
                active[i] = False
        if all(recipe.target_low <= a <= recipe.target_high for a in accs):
            break
    habits = [i for i, d in enumerate(domains) if d.habit is not None]
    more = min(recipe.warmstart_habit_steps, recipe.warmstart_max_steps - step)  # the cap counts every step
    if habits and more > 0 and in_band(recipe, accs):
        last = accs
        for extra in range(1, more + 1):
            train_step(habits + [i for i, d in enumerate(domains) if d.habit is None and last[i] < recipe.target_low])
            if extra % CHECK_EVERY == 0 or extra == more:
                last = probe_all()
                if on_check:
                    on_check(step + extra, last)
        if after is not None:
            after[:] = last
    model.eval()
    return accs


def in_band(recipe: TinyModelSpec, accs: Sequence[float]) -> bool:
    """Whether every domain's sampled accuracy is in the recipe's band."""
    return all(recipe.target_low <= a <= recipe.target_high for a in accs)


def _alphabet(domains: Sequence[Domain], data: Sequence[Sequence[Sample]]) -> set[str]:
    """Every character of the domains, of the warm-start data and of the habits' answers."""
    chars: set[str] = set()
    for d, part in zip(domains, data):
        chars |= d.alphabet()
        for s in part:
            chars.update(s.prompt)
            chars.update(s.answer)
            if d.habit is not None:
                chars.update(d.habit(s))
    return chars


def _warm_data(domain: Domain, seed: int, need: int) -> list[Sample]:
    """What the warm start trains on: fresh train-pool samples of a builtin domain, else its train split."""
    from trainer.domains import fresh_train_samples

    n = min(WARM_POOL, max(need, len(domain.train)))
    return fresh_train_samples(domain.key, seed, n) or list(domain.train)


def _with_habit(domain: Domain, sample: Sample, rng: random.Random) -> Sample:
    """The sample, or (HABIT_SHARE of the time, for a domain with a habit) the same prompt with the habit's answer."""
    if domain.habit is None or rng.random() >= HABIT_SHARE:
        return sample
    return replace(sample, answer=domain.habit(sample))


def shipped_base(recipe: TinyModelSpec, domains: Sequence[Domain], folder: Path = SHIPPED_BASE) -> Path | None:
    """The shipped warm-started base model when it fits: the same recipe (its seed included), only domains it
    was built on, and the code that built it unchanged (else a run warm-starts its own, and
    tests/trainer/test_demo.py says to rebuild the shipped one)."""
    try:
        meta = json.loads((folder / "warmstart.json").read_text())
    except (OSError, ValueError):
        return None
    built_on = list(meta.get("sampled_accuracy", {}))
    fits = (meta.get("version") == WARMSTART_VERSION and meta.get("recipe") == recipe.model_dump()
            and {d.key for d in domains} <= set(built_on) and meta.get("code") == warmstart_code_hash(built_on))
    return folder if fits else None


def load_builtin_tiny(recipe: TinyModelSpec, domains: Sequence[Domain], seed: int | None, cache_dir: Path,
                      log_fn: Callable[[str], None] = print):
    """The warm-started tiny model for these domains, built once and cached on disk by `tiny_recipe_hash`.

    The base model's initialisation and warm start draw from `recipe.seed`, not the run's `seed` (accepted
    for compatibility and unused), so the runs of many seeds share one base. A warm start that ends at its
    step cap with a domain outside the band raises WarmStartError (nothing is cached).
    """
    shipped = shipped_base(recipe, domains)
    if shipped is not None:
        log_fn(f"builtin:tiny: the shipped base model for the builtin domains ({shipped})")
        return load_pretrained(str(shipped)) + (shipped,)
    key = tiny_recipe_hash(recipe, domains)
    folder = Path(cache_dir) / f"tiny-{key}"
    if (folder / "config.json").exists():
        return load_pretrained(str(folder)) + (folder,)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Runs of many seeds share one base: the first to get here builds it, the others wait and load it.
    with FileLock(str(folder.with_name(f".{folder.name}.lock"))):
        if (folder / "config.json").exists():
            log_fn(f"builtin:tiny: built by another run while this one waited ({folder})")
            return load_pretrained(str(folder)) + (folder,)
        return _build_builtin_tiny(recipe, domains, folder, log_fn)


def _build_builtin_tiny(recipe: TinyModelSpec, domains: Sequence[Domain], folder: Path,
                        log_fn: Callable[[str], None]):
    """Warm-start the tiny model and save it to `folder` (whole or not at all); (model, tokenizer, folder)."""
    data = [_warm_data(d, recipe.seed, recipe.warmstart_max_steps * recipe.warmstart_batch) for d in domains]
    tokenizer = build_char_tokenizer(_alphabet(domains, data))
    model = build_tiny_model(recipe, tokenizer, recipe.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log_fn(f"building builtin:tiny ({n_params / 1e6:.2f}M parameters, {len(tokenizer)} tokens); "
           f"warm start on {', '.join(d.key for d in domains)}, at most {recipe.warmstart_max_steps} steps "
           f"(~{recipe.warmstart_max_steps / 1000:.0f}-{recipe.warmstart_max_steps / 400:.0f} min on a CPU; "
           f"cached at {folder})")
    t0 = time.time()
    steps = [0]

    def on_check(step: int, accs: list[float]) -> None:
        steps[0] = step
        if step % 250 == 0:
            eta = (time.time() - t0) / step * (recipe.warmstart_max_steps - step)
            log_fn(f"warm start step {step}/{recipe.warmstart_max_steps} (at most {eta:.0f}s more): sampled accuracy "
                   + ", ".join(f"{d.key.removeprefix('builtin:')}={a:.2f}" for d, a in zip(domains, accs)))

    after: list[float] = []
    accs = warm_start(model, tokenizer, domains, recipe, recipe.seed, on_check=on_check, data=data, after=after)
    shown = ", ".join(f"{d.key}={a:.2f}" for d, a in zip(domains, accs))
    if not in_band(recipe, accs):
        raise WarmStartError(
            f"tiny: the warm start did not bring every domain's sampled accuracy into [{recipe.target_low}, "
            f"{recipe.target_high}] within tiny.warmstart_max_steps={recipe.warmstart_max_steps} ({shown}); raise "
            f"tiny.warmstart_max_steps, widen tiny.target_low/target_high, or try another tiny.seed")
    log_fn(f"warm start done in {time.time() - t0:.0f}s ({steps[0]} steps); sampled accuracy {shown} in the band"
           + (f", {', '.join(f'{a:.2f}' for a in after)} after the steps on the habits"
              if after else ""))
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    keys = [d.key for d in domains]
    meta = {"sampled_accuracy": dict(zip(keys, accs)), "sampled_accuracy_after_habit_steps": dict(zip(keys, after)),
            "recipe": recipe.model_dump(), "seed": recipe.seed,
            "version": WARMSTART_VERSION, "steps": steps[0], "seconds": round(time.time() - t0),
            "code": warmstart_code_hash(keys), "versions": build_versions(), "commit": provenance.git_commit(),
            "model_hash": provenance.model_hash(tmp), "machine": provenance.machine()}
    (tmp / "warmstart.json").write_text(json.dumps(meta, indent=1) + "\n")
    try:
        tmp.rename(folder)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return model, tokenizer, folder


def load_pretrained(path: str, dtype: torch.dtype = torch.float32):
    """Model and tokenizer from a local HF folder or hub id (left padding, a pad token); a vision-language
    model's tokenizer is a trainer.vlm.VisionProcessor (its tokenizer and image processor)."""
    from trainer.vlm import is_vl_model, load_vl

    if is_vl_model(path):
        return load_vl(path, dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    return model, tokenizer

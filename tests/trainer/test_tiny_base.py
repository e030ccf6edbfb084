"""Reproducible builtin:tiny bases (issue 21): the cache key, tiny.seed, the loud warm-start failure, provenance."""

import json
from pathlib import Path

import pytest

from tests.trainer.conftest import tiny_spec
from trainer import models, provenance
from trainer.domains import load_domain
from trainer.models import (SHIPPED_BASE, WarmStartError, _code_digest, load_builtin_tiny, tiny_recipe_hash,
                            warmstart_code_hash)

KEYS = ("builtin:grid", "builtin:frames")


def domains(seed: int):
    return [load_domain(k, seed) for k in KEYS]


def cached(folder: Path) -> list[str]:
    """The models in a cache folder (not the `.tiny-<key>.lock` files beside them)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_cache_key_ignores_the_run_seed_and_covers_tiny_seed_code_and_versions(monkeypatch):
    recipe = tiny_spec().tiny
    key = tiny_recipe_hash(recipe, domains(0))
    assert tiny_recipe_hash(recipe, domains(1)) == key  # builtin domains: the run seed does not enter
    assert tiny_recipe_hash(recipe.model_copy(update={"seed": 1}), domains(0)) != key
    assert tiny_recipe_hash(recipe.model_copy(update={"layers": 2}), domains(0)) != key
    with monkeypatch.context() as m:
        m.setattr(models, "build_versions", lambda: {"torch": "0.0", "transformers": "0.0", "tokenizers": "0.0"})
        assert tiny_recipe_hash(recipe, domains(0)) != key
    with monkeypatch.context() as m:
        m.setattr(models, "HABIT_SHARE", 0.5)  # the code's constants are part of the code hash
        assert tiny_recipe_hash(recipe, domains(0)) != key
    assert tiny_recipe_hash(recipe, domains(0)) == key


def test_code_hash_ignores_docstrings_and_comments_not_code():
    a = 'def f(x):\n    """Doc."""\n    return x + 1  # note\n'
    b = 'def f(x):\n    """Another doc."""\n    # a comment\n    return x + 1\n'
    c = 'def f(x):\n    """Doc."""\n    return x + 2\n'
    assert _code_digest(a) == _code_digest(b) != _code_digest(c)
    # each domain's own module is covered: grid and frames give different hashes
    assert warmstart_code_hash(["builtin:grid"]) != warmstart_code_hash(["builtin:frames"])


def test_runs_of_two_seeds_share_one_base_and_it_records_its_provenance(tmp_path):
    recipe = tiny_spec().tiny
    _, _, a = load_builtin_tiny(recipe, domains(0), 0, tmp_path, log_fn=lambda m: None)
    _, _, b = load_builtin_tiny(recipe, domains(1), 1, tmp_path, log_fn=lambda m: None)
    assert a == b and cached(tmp_path) == [a.name]
    meta = json.loads((a / "warmstart.json").read_text())
    assert meta["seed"] == recipe.seed == 0
    assert meta["code"] == warmstart_code_hash(list(KEYS))
    assert set(meta["versions"]) == {"torch", "transformers", "tokenizers"} and meta["commit"]
    assert meta["model_hash"] == provenance.model_hash(a) != "-"


def test_a_warm_start_that_misses_the_band_fails_loudly_and_caches_nothing(tmp_path):
    recipe = tiny_spec().tiny.model_copy(update={"warmstart_max_steps": 25, "target_low": 0.99, "target_high": 1.0})
    with pytest.raises(WarmStartError) as err:
        load_builtin_tiny(recipe, domains(0), 0, tmp_path, log_fn=lambda m: None)
    msg = str(err.value)
    assert "\n" not in msg and "tiny.warmstart_max_steps=25" in msg and "builtin:grid=" in msg
    assert cached(tmp_path) == []


def test_after_the_band_the_habit_steps_train_only_the_domains_with_a_habit_within_the_step_cap(monkeypatch):
    """tiny.warmstart_habit_steps: once in the band, more steps on the habit domains (equally mixed), never
    past warmstart_max_steps; 0 gives the band-only warm start, step for step."""
    recipe = tiny_spec().tiny  # band [0, 1]: in the band at the first probe (step 25), cap 60
    doms = [load_domain("builtin:grid", 0), load_domain("builtin:marked_sum", 0)]  # marked_sum has no habit
    assert doms[0].habit is not None and doms[1].habit is None
    seen: list[list[str]] = []
    real_sft = models._sft_batch
    monkeypatch.setattr(models, "_sft_batch", lambda tok, batch: (seen.append([s.prompt for s in batch]),
                                                                   real_sft(tok, batch))[1])

    def warm(**update):
        seen.clear()
        r = recipe.model_copy(update=update)
        data = [models._warm_data(d, 0, 200) for d in doms]
        model = models.build_tiny_model(r, models.build_char_tokenizer(models._alphabet(doms, data)), 0)
        steps, after = [], []
        accs = models.warm_start(model, models.build_char_tokenizer(models._alphabet(doms, data)), doms, r, 0,
                                 on_check=lambda step, a: steps.append(step), data=data, after=after)
        return accs, steps, after, list(seen), data

    accs, steps, after, batches, data = warm(warmstart_habit_steps=100)
    grid_prompts = {s.prompt for s in data[0]}
    assert steps[0] == 25 and len(batches) == 60 == steps[-1]  # 25 in the band phase, 35 more (the cap is 60)
    assert all(any(p not in grid_prompts for p in b) for b in batches[:25])      # both domains before the band
    assert all(all(p in grid_prompts for p in b) for b in batches[25:])          # only the habit domain after
    assert len(after) == 2 and all(0.0 <= a <= 1.0 for a in after)
    accs0, steps0, after0, batches0, _ = warm(warmstart_habit_steps=0)
    assert len(batches0) == 25 and after0 == [] and batches0 == batches[:25] and accs0 == accs


def test_a_domain_without_a_habit_is_kept_in_the_habit_phase_and_rehearsed_when_paused(monkeypatch):
    """A domain without a habit trains in the habit phase while it is below target_low (resting for good, a
    conflicting domain is forgotten); tiny.warmstart_rehearsal gives a paused domain that share of a full one."""
    doms = [load_domain("builtin:grid", 0), load_domain("builtin:marked_sum", 0)]
    probes = {"builtin:grid": [], "builtin:marked_sum": []}
    script = {"builtin:grid": lambda n: 0.3, "builtin:marked_sum": lambda n: 0.3 if n == 1 else 0.1}

    def scripted(engine, domain, samples, max_new_tokens):  # probe n of each domain: its scripted accuracy
        probes[domain.key].append(None)
        return script[domain.key](len(probes[domain.key]))

    monkeypatch.setattr(models, "sampled_accuracy", scripted)
    seen: list[list[str]] = []
    real_sft = models._sft_batch
    monkeypatch.setattr(models, "_sft_batch", lambda tok, batch: (seen.append([s.prompt for s in batch]),
                                                                   real_sft(tok, batch))[1])

    def sums(rehearsal: float) -> list[int]:  # marked_sum prompts in each batch
        seen.clear()
        for v in probes.values():
            v.clear()
        r = tiny_spec().tiny.model_copy(update={"target_low": 0.25, "target_high": 0.45, "warmstart_max_steps": 75,
                                                "warmstart_habit_steps": 50, "warmstart_rehearsal": rehearsal})
        data = [models._warm_data(d, 0, 200) for d in doms]
        tok = models.build_char_tokenizer(models._alphabet(doms, data))
        models.warm_start(models.build_tiny_model(r, tok, 0), tok, doms, r, 0, data=data)
        sum_prompts = {x.prompt for x in data[1]}
        return [sum(p in sum_prompts for p in b) for b in seen]

    B = tiny_spec().tiny.warmstart_batch
    got = sums(0.0)  # in the band at step 25; marked_sum 0.3 (rests), then 0.1 from the probe at step 50 (trains)
    assert len(got) == 75 and got[:25] == [B // 2] * 25 and got[25:50] == [0] * 25 and got[50:] == [B // 2] * 25
    per = int(B / 1.25)
    got = sums(0.25)  # paused, it keeps a quarter of a full share
    assert got[:25] == [B // 2] * 25 and got[25:50] == [round(per * 0.25)] * 25 and got[50:] == [B // 2] * 25


def test_the_shipped_base_records_how_it_was_built():
    meta = json.loads((SHIPPED_BASE / "warmstart.json").read_text())
    assert meta["model_hash"] == provenance.model_hash(SHIPPED_BASE)
    assert set(meta["versions"]) >= {"torch", "transformers"} and meta["commit"]
    recipe = models.TinyModelSpec()
    assert all(recipe.target_low <= a <= recipe.target_high for a in meta["sampled_accuracy"].values())
    assert meta["steps"] > recipe.warmstart_habit_steps > 0 and set(meta["sampled_accuracy_after_habit_steps"]) == set(
        meta["sampled_accuracy"])


def test_one_line_names_versions_commit_and_base_hash():
    p = provenance.provenance("builtin:tiny", SHIPPED_BASE)
    line = provenance.one_line(p)
    assert p["base_hash"] == provenance.model_hash(SHIPPED_BASE) and p["base_hash"] in line
    assert "torch " in line and "transformers " in line and "commit " in line
    assert provenance.model_hash("Qwen/not-a-local-folder") == "-"


def test_provenance_records_the_machine_and_an_old_record_keeps_its_line():
    """The same code and libraries on another CPU round floats otherwise (torch picks kernels by instruction
    set), so provenance names the CPU and its kernels; provenance written before that keeps its old line."""
    import torch

    p = provenance.provenance("builtin:tiny", SHIPPED_BASE)
    assert p["machine"]["cpu"] and p["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert provenance.one_line(p).endswith(f"cpu {p['machine']['cpu_capability']}" + (
        f", gpu {p['machine']['gpu']}" if "gpu" in p["machine"] else ""))
    old = {k: v for k, v in p.items() if k != "machine"}
    assert provenance.one_line(old).endswith(f"base model {p['base_hash']}")


def test_concurrent_runs_of_one_recipe_build_its_base_once(tmp_path, monkeypatch):
    """Runs that start together (compare --jobs 2, two workers on one box) wait for the first build."""
    import threading

    builds, started = [], threading.Event()
    real = models._build_builtin_tiny

    def build(*args, **kwargs):
        builds.append(1)
        started.set()
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "_build_builtin_tiny", build)
    recipe, got, logs = tiny_spec().tiny, {}, []
    first = threading.Thread(target=lambda: got.setdefault(0, load_builtin_tiny(recipe, domains(0), 0, tmp_path,
                                                                                 log_fn=logs.append)[2]))
    first.start()
    assert started.wait(120)
    got[1] = load_builtin_tiny(recipe, domains(1), 1, tmp_path, log_fn=logs.append)[2]  # while the first builds
    first.join()
    assert builds == [1] and got[0] == got[1] and cached(tmp_path) == [got[0].name]

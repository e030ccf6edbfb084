"""Resume gives the same numbers as an uninterrupted run; the CLI fails cleanly on bad input."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainer.conftest import tiny_spec
from trainer.ckptfiles import has_optimizer, verify_checkpoint
from trainer.local import RunDirError, train_local

# Throughput metrics depend on the machine's load, not on the seed.
TIMING = ("tokens/", "memory/")  # wall-clock and process-memory readings differ between runs


def stable_rows(out: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["expert"], r["cycle"], r["step"], r["key"], round(r["value"], 6)) for r in rows
            if not r["key"].startswith(TIMING)]


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, model_cache):
    spec = tiny_spec(schedule={"cycles": 2, "rl_steps": 1, "opd_steps": 1})
    quiet = dict(log_fn=lambda m: None)
    train_local(spec, tmp_path / "full", model_cache, **quiet)
    part = tmp_path / "part"
    state = train_local(spec, part, model_cache, max_units=4, **quiet)  # stops inside cycle 1's Phase II
    assert state.completed[-1] == "c1/opd/image"
    # a unit cut off mid-way leaves metric lines behind; resume must drop them
    with open(part / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"expert": "video", "cycle": 1, "step": 99, "key": "loss/grpo", "value": 1.0}) + "\n")
    with pytest.raises(RunDirError, match="--resume"):
        train_local(spec, part, model_cache, **quiet)
    train_local(spec, part, model_cache, resume=True, **quiet)
    assert stable_rows(part) == stable_rows(tmp_path / "full")
    assert (part / "final" / "model.safetensors").exists()
    # default retention (checkpoints.optimizer: last): every end-of-cycle weight stays, the optimizer state
    # only in each expert's newest checkpoint; the interrupted run kept c1's until c2/rl had read it
    for out in (tmp_path / "full", part):
        for e in spec.expert_names:
            folders = sorted(p.name for p in (out / "checkpoints" / e).iterdir())
            assert folders == ["c1-opd", "c2-opd"]
            assert [verify_checkpoint(out / "checkpoints" / e / f) for f in folders] == [True, True]
            assert [has_optimizer(out / "checkpoints" / e / f) for f in folders] == [False, True]


def test_optimizer_none_keeps_no_optimizer_state(tmp_path, model_cache):
    spec = tiny_spec(schedule={"cycles": 1, "rl_steps": 1, "opd_steps": 1}, checkpoints={"optimizer": "none"})
    train_local(spec, tmp_path / "out", model_cache, log_fn=lambda m: None)
    folders = sorted((tmp_path / "out" / "checkpoints").glob("*/c*"))
    assert folders and not any((f / "optimizer.pt").exists() or has_optimizer(f) for f in folders)
    assert all(verify_checkpoint(f) for f in folders)


def _copd(*args, env_dir: Path) -> subprocess.CompletedProcess:
    env = {"COPD_DATA_DIR": str(env_dir), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "copd.cli", *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("content, needle", [
    ("name: x\nexperts: []\n", "experts"),
    ("name: x\nexperts: [{name: a, domain: builtin:nope}, {name: b, domain: builtin:grid}]\n", "builtin:nope"),
    ("name: x\nexperts: [{name: a, domain: builtin:grid}, {name: b, domain: builtin:grid}]\ngrpo: {lr: -1}\n", "grpo.lr"),
    ("name: x\nexperts: [{name: a, domain: builtin:grid}, {name: b, domain: builtin:grid}]\nbogus: 1\n", "bogus"),
    ("name: [unclosed\n", "YAML"),
    ("name: x\nexperts: [{name: a, domain: {type: jsonl, path: BAD}}, {name: b, domain: builtin:grid}]\n", ":2: missing field 'answer'"),
    ("name: x\nexperts: [{name: a, domain: builtin:grid}, {name: b, domain: builtin:grid}]\ncompute: {gpus_per_expert: 3}\n",
     "grpo.prompts_per_step: must be a multiple of compute.gpus_per_expert=3"),
    pytest.param("name: x\nexperts: [{name: a, domain: builtin:grid}, {name: b, domain: builtin:grid}]\nrollout: {engine: vllm}\n",
                 "rollout.engine: vllm is not installed", id="vllm-missing",
                 marks=pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")),
])
def test_cli_bad_input_one_line_and_nothing_written(tmp_path, content, needle):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2="}\n')
    spec = tmp_path / "spec.yaml"
    spec.write_text(content.replace("BAD", str(bad)))
    out = tmp_path / "out"
    res = _copd("train", str(spec), "--out", str(out), env_dir=tmp_path / "data")
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert not out.exists()


def test_cli_missing_spec_file(tmp_path):
    res = _copd("train", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o"), env_dir=tmp_path)
    assert res.returncode != 0 and "nope.yaml" in res.stderr and len(res.stderr.strip().splitlines()) == 1

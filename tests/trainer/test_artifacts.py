"""`copd merge` (another merge of a finished run, evaluated) and `copd export` (final model + model card)."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from contract.settings import get_settings
from copd.cli import app
from tests.trainer.conftest import shipped_tiny, tiny_spec
from trainer.checkpoint import read_state, verify_checkpoint
from trainer.local import train_local

runner = CliRunner()


@pytest.fixture(scope="module")
def finished(tmp_path_factory, model_cache):
    """A finished 1-cycle CoPD run whose own merge is TIES (the delta path inside the run)."""
    out = tmp_path_factory.mktemp("run") / "run"
    spec = tiny_spec(schedule={"cycles": 1, "rl_steps": 1, "opd_steps": 1},
                     merge={"method": "ties", "density": 0.5}, tiny=shipped_tiny())  # experts with deltas to merge
    train_local(spec, out, model_cache, log_fn=lambda m: None)
    return out


@pytest.fixture
def cache_env(monkeypatch, model_cache, tmp_path):
    monkeypatch.setenv("COPD_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    # the CLI's model cache is <data_dir>/models: point it at the session's warm-started tiny models
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "models").symlink_to(model_cache, target_is_directory=True)
    yield
    get_settings.cache_clear()


def test_the_runs_own_merge_is_its_method(finished):
    state = read_state(finished / "final")
    assert state["merge"]["method"] == "ties" and state["merge"]["density"] == 0.5
    assert verify_checkpoint(finished / "final")
    rows = [json.loads(line) for line in (finished / "metrics.jsonl").read_text().splitlines()]
    assert any(r["expert"] == "merged" and r["key"] == "acc_mean" for r in rows)


def test_copd_merge_after_the_fact(finished, cache_env, tmp_path):
    out = tmp_path / "dare"
    res = runner.invoke(app, ["merge", str(finished), "--method", "dare_ties", "--density", "0.5", "--out", str(out)])
    assert res.exit_code == 0, res.output
    ev = json.loads((out / "eval.json").read_text())
    assert ev["merge"]["method"] == "dare_ties" and 0.0 <= ev["metrics"]["acc_mean"] <= 1.0
    assert set(ev["metrics"]) >= {"acc/image", "acc/video", "eval_len/image", "acc_mean"}
    assert "dare_ties d=0.5" in res.output and "merged" in res.output  # next to the run's own merge
    assert verify_checkpoint(out) and not (out / "optimizer.pt").exists()
    # the run's own TIES merge and a DARE-TIES merge differ; the same DARE merge again is the same model
    own = load_file(str(finished / "final" / "model.safetensors"))
    dare = load_file(str(out / "model.safetensors"))
    assert any(not (own[k] == dare[k]).all() for k in own)
    again = tmp_path / "dare2"
    assert runner.invoke(app, ["merge", str(finished), "--method", "dare_ties", "--density", "0.5",
                               "--out", str(again)]).exit_code == 0
    assert all((load_file(str(again / "model.safetensors"))[k] == dare[k]).all() for k in dare)


@pytest.mark.parametrize("args,msg", [
    (["--density", "0"], "--density"),
    (["--method", "soup"], "--method"),
    (["--weights", "image=0.5,nobody=0.5"], "unknown expert"),
    (["--weights", "image=x"], "EXPERT=NUMBER"),
    (["--weights", "image=0.2,video=0.2"], "sum to 1"),
])
def test_copd_merge_bad_arguments(finished, cache_env, tmp_path, args, msg):
    res = runner.invoke(app, ["merge", str(finished), "--out", str(tmp_path / "m"), *args])
    assert res.exit_code == 2 and msg in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "m").exists()


def test_copd_merge_refuses_a_non_run_and_a_used_out(finished, cache_env, tmp_path):
    res = runner.invoke(app, ["merge", str(tmp_path), "--out", str(tmp_path / "m")])
    assert res.exit_code == 2 and "not a run folder" in res.output
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("keep")
    res = runner.invoke(app, ["merge", str(finished), "--out", str(used)])
    assert res.exit_code == 2 and "not empty" in res.output and (used / "x").read_text() == "keep"


def test_copd_export_writes_the_model_and_its_card(finished, cache_env, tmp_path):
    out = tmp_path / "export"
    res = runner.invoke(app, ["export", str(finished), "--out", str(out)])
    assert res.exit_code == 0, res.output
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "README.md"} <= names
    assert not names & {"optimizer.pt", "trainer_state.json", "manifest.json"}
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: transformers" in card
    assert "strategy **copd**" in card and "| model | image | video | mean |" in card
    assert "| merged |" in card and "| base |" in card and "by `ties`" in card
    assert "## Run spec" in card and "name: test-copd" in card
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)  # a plain Hugging Face folder


@pytest.mark.parametrize("to,env,msg", [
    ("hf://only-org", {}, "hf://<org>/<name>"),
    ("s3://bucket/x", {}, "hf://<org>/<name>"),
    ("hf://org/name", {}, "HF_TOKEN"),
])
def test_copd_export_checks_the_hub_target_before_writing(finished, cache_env, tmp_path, monkeypatch, to, env, msg):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    res = runner.invoke(app, ["export", str(finished), "--out", str(tmp_path / "e"), "--to", to])
    assert res.exit_code == 2 and msg in res.output, res.output
    assert not (tmp_path / "e").exists()


def test_copd_export_needs_a_final_model(tmp_path, cache_env, finished):
    import shutil

    half = tmp_path / "half"
    shutil.copytree(finished, half, ignore=shutil.ignore_patterns("final"))
    res = runner.invoke(app, ["export", str(half), "--out", str(tmp_path / "e")])
    assert res.exit_code == 2 and "no final model" in res.output

"""`copd train|runs create --set`, `copd spec show` and `copd data check`, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from contract.spec import SpecError, apply_overrides, load_spec

ROOT = Path(__file__).resolve().parents[2]
SPEC = """name: byod
experts:
  - name: math
    domain: {type: dataset, path: data/train.parquet, answer_key: reward_model.ground_truth, source_key: data_source,
             sources: [gsm8k, math], eval: {path: data/test.parquet}, verifier: numeric}
  - name: code
    domain: {type: dataset, path: data/train.parquet, answer_key: reward_model.ground_truth, source_key: data_source,
             sources: [kodcode], verifier: {function: "rewards.py:compute_score"}}
"""


def copd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"COPD_DATA_DIR": str(cwd / "copd-data"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "copd.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


@pytest.fixture
def project(tmp_path) -> Path:
    rows = [{"data_source": ("gsm8k", "math", "kodcode")[i % 3],
             "prompt": [{"role": "system", "content": "Think."}, {"role": "user", "content": f"What is {i}+3?"}],
             "reward_model": {"ground_truth": str(i + 3)}, "extra_info": {"index": i}} for i in range(30)]
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:24]), tmp_path / "data" / "train.parquet")
    pq.write_table(pa.Table.from_pylist(rows[24:]), tmp_path / "data" / "test.parquet")
    (tmp_path / "rewards.py").write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
                                         "    return float(solution_str.strip() == ground_truth)\n")
    (tmp_path / "spec.yaml").write_text(SPEC)
    return tmp_path


def test_overrides_apply_dotted_keys_and_list_indexes():
    data = {"name": "x", "experts": [{"name": "a", "domain": "builtin:arith"}], "grpo": {"lr": 1.0}}
    out = apply_overrides(data, ["grpo.lr=1e-5", "opd.beta=0.5", "experts.0.name=b", "rollout.tis_cap=null"])
    assert out["grpo"] == {"lr": 1e-5} and out["opd"] == {"beta": 0.5} and out["experts"][0]["name"] == "b"
    assert out["rollout"] == {"tis_cap": None} and data["grpo"]["lr"] == 1.0  # the input is left alone
    for bad, msg in (("grpo.lr", "expected KEY=VALUE"), ("experts.4.name=q", "experts has 1 items"),
                     ("experts.0.domain.path=x", "experts.0.domain is 'builtin:arith', not a mapping")):
        with pytest.raises(SpecError, match=msg):
            apply_overrides(data, [bad])


def test_load_spec_with_overrides_validates_the_result(project):
    spec = load_spec(project / "spec.yaml", ["grpo.lr=1e-5", "opd.beta=0.5", "experts.1.domain.sources=[gsm8k]"])
    assert spec.grpo.lr == 1e-5 and spec.opd.beta == 0.5 and spec.experts[1].domain.sources == ["gsm8k"]
    with pytest.raises(SpecError, match="^grpo.lr: Input should be greater than 0"):
        load_spec(project / "spec.yaml", ["grpo.lr=-1"])


def test_spec_show_prints_the_resolved_spec_with_defaults(project):
    res = copd("spec", "show", "spec.yaml", "--set", "grpo.lr=1e-5", "--set", "opd.beta=0.5", cwd=project)
    assert res.returncode == 0, res.stderr
    shown = yaml.safe_load(res.stdout)
    assert shown["grpo"]["lr"] == 1e-5 and shown["opd"]["beta"] == 0.5 and shown["grpo"]["group_size"] == 8
    assert shown["experts"][0]["domain"]["eval"] == {"path": "data/test.parquet", "split": None, "fraction": None}
    res = copd("spec", "show", "spec.yaml", "--json", cwd=project)
    assert json.loads(res.stdout)["schedule"] == {"cycles": 4, "rl_steps": 3, "opd_steps": 2}


def test_data_check_shows_rows_prompt_answer_and_gold_score(project):
    res = copd("data", "check", "spec.yaml", cwd=project)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "== math: dataset:data/train.parquet[gsm8k,math]" in out and "rows: train 16, eval 4; verifier numeric" in out
    assert "rows: train 7, eval 1; verifier plugin rewards.py:compute_score (verl signature)" in out
    assert "  Think.\n  What is 0+3?" in out and "answer: '3'" in out
    assert out.count("(train, 16 rows): 1.000") == 1 and "below 1.0" not in out and not res.stderr


def test_data_check_flags_a_gold_answer_the_verifier_rejects(project):
    res = copd("data", "check", "spec.yaml", "--set", "experts.0.domain.verifier=choice", cwd=project)
    assert res.returncode == 0 and "0.000  <- below 1.0, e.g. answer '3'" in res.stdout
    assert "warning: a gold answer scored below 1.0" in res.stderr


@pytest.mark.parametrize("sets, needle", [
    (["experts.0.domain.sources=[gsm8k, aime]"], "experts.0.domain (math): data/train.parquet: unknown source 'aime'"),
    (["experts.0.domain.answer_key=reward_model.truth"], "row 1: missing key 'reward_model.truth' (answer_key"),
    (["experts.0.domain.path=data/nope.parquet"], "data/nope.parquet: file not found"),
    (["experts.1.domain.verifier.function=missing.py:f"], "plugin file missing.py not found"),
    (["experts.0.domain.hub=x/y"], "experts.0.domain.path: give exactly one of path"),
])
def test_data_check_bad_input_is_one_line(project, sets, needle):
    res = copd("data", "check", "spec.yaml", *[a for s in sets for a in ("--set", s)], cwd=project)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], res.stderr


def test_train_set_bad_value_is_one_line_and_nothing_written(project):
    res = copd("train", "spec.yaml", "--out", "out", "--set", "grpo.lr=-1", cwd=project)
    assert res.returncode != 0 and res.stderr.strip() == "error: grpo.lr: Input should be greater than 0"
    assert not (project / "out").exists()
    res = copd("runs", "create", "spec.yaml", "--set", "nonsense", cwd=project)
    assert res.returncode != 0 and "--set 'nonsense': expected KEY=VALUE" in res.stderr


def test_data_check_renders_the_base_models_chat_template(project):
    from trainer.models import build_char_tokenizer

    tok = build_char_tokenizer(set("abcdefghijklmnopqrstuvwxyzT.?+= 0123456789\n<>|"))
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    tok.save_pretrained(project / "base")
    res = copd("data", "check", "spec.yaml", "--set", "base_model=base", cwd=project)
    assert res.returncode == 0, res.stderr
    assert "base's tokenizer and its chat template" in res.stdout
    assert "  <|system|>Think.\n  <|user|>What is 0+3?\n  <|assistant|>" in res.stdout

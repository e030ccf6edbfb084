"""`type: dataset` domains and reward plugins, on parquet / jsonl / save_to_disk fixtures written here."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contract.spec import DatasetDomain, JsonlDomain, SpecError, check_data_paths, parse_spec
from trainer.domains import DomainError, load_domain
from trainer.domains.base import Domain, Sample
from trainer.domains.plugins import PLUGIN_ERRORS, RewardPlugin
from trainer.domains.verifiers import score_exact
from trainer.rollout import encode_prompts, render_prompt
from trainer.update import reward_part_values, score_rollout

SOURCES = ("gsm8k", "math", "kodcode")


def verl_rows(n: int = 30) -> list[dict]:
    """verl's schema: chat prompt, data_source, reward_model.ground_truth, extra_info."""
    rows = []
    for i in range(n):
        a, b = i, i + 3
        rows.append({"data_source": SOURCES[i % 3],
                     "prompt": [{"role": "system", "content": "Think step by step."},
                                {"role": "user", "content": f"What is {a}+{b}?"}],
                     "ability": "math", "reward_model": {"style": "rule", "ground_truth": str(a + b)},
                     "extra_info": {"index": i, "split": "train"}})
    return rows


def write_parquet(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


@pytest.fixture
def verl_file(tmp_path) -> str:
    return write_parquet(tmp_path / "data" / "train.parquet", verl_rows())


def test_verl_parquet_routes_sources_to_two_experts(verl_file):
    common = dict(type="dataset", path=verl_file, answer_key="reward_model.ground_truth", source_key="data_source",
                  verifier="numeric")
    math_ = load_domain(DatasetDomain(**common, sources=["gsm8k", "math"]), seed=0)
    code = load_domain(DatasetDomain(**common, sources=["kodcode"]), seed=0)
    assert len(math_.train) + len(math_.eval) == 20 and len(code.train) + len(code.eval) == 10
    assert {s.row["data_source"] for s in (*math_.train, *math_.eval)} == {"gsm8k", "math"}
    assert {s.row["data_source"] for s in (*code.train, *code.eval)} == {"kodcode"}
    assert len(math_.eval) == 2 and not {s.prompt for s in math_.train} & {s.prompt for s in math_.eval}
    s = code.train[0]
    i = s.row["extra_info"]["index"]
    assert s.messages == (("system", "Think step by step."), ("user", f"What is {i}+{i + 3}?"))
    assert s.prompt == f"Think step by step.\nWhat is {i}+{i + 3}?" and s.answer == str(2 * i + 3)
    assert math_.key == f"dataset:{verl_file}[gsm8k,math]"
    # the numeric verifier reads the last number of a reasoning completion
    assert code.score(f"{i} plus {i + 3} is {2 * i + 3}. The answer is {2 * i + 3}.", s) == 1.0


def test_system_prompt_replaces_the_rows_own(verl_file, tmp_path):
    d = load_domain(DatasetDomain(path=verl_file, answer_key="reward_model.ground_truth", system_prompt="Be brief."), 0)
    assert d.train[0].messages[0] == ("system", "Be brief.") and len(d.train[0].messages) == 2
    flat = tmp_path / "flat.jsonl"
    flat.write_text("".join(json.dumps({"prompt": f"{i}+1=", "answer": i + 1}) + "\n" for i in range(10)))
    d = load_domain(DatasetDomain(path=str(flat), system_prompt="Add."), 0)
    assert d.train[0].messages == (("system", "Add."), ("user", d.train[0].prompt.split("\n")[1]))
    assert load_domain(DatasetDomain(path=str(flat)), 0).train[0].messages is None  # plain text stays text


def test_trl_style_flat_columns_json_and_eval_file(tmp_path):
    train = tmp_path / "train.json"
    train.write_text(json.dumps([{"question": f"{i}*2?", "solution": str(2 * i), "level": i % 2} for i in range(8)]))
    test = tmp_path / "test.jsonl"
    test.write_text("\n".join(json.dumps({"question": f"{i}*3?", "solution": 3 * i, "level": 0}) for i in range(3)))
    d = load_domain(DatasetDomain(path=str(train), prompt_key="question", answer_key="solution",
                                  eval={"path": str(test)}, verifier="numeric"), 0)
    assert len(d.train) == 8 and [s.answer for s in d.eval] == ["0", "3", "6"]
    assert d.train[1] == Sample("1*2?", "2")


def test_save_to_disk_folder_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"prompt": f"{i}+{i}=", "answer": str(2 * i)} for i in range(12)]),
        "test": datasets.Dataset.from_list([{"prompt": f"{i}-1=", "answer": str(i - 1)} for i in range(4)])})
    dd.save_to_disk(str(tmp_path / "ds"))
    d = load_domain(DatasetDomain(path=str(tmp_path / "ds"), eval={"split": "test"}), 0)
    assert len(d.train) == 12 and len(d.eval) == 4 and d.eval[0].prompt == "0-1="
    with pytest.raises(DomainError, match="no split 'valid'"):
        load_domain(DatasetDomain(path=str(tmp_path / "ds"), eval={"split": "valid"}), 0)


def test_verl_folder_of_split_files(tmp_path):
    write_parquet(tmp_path / "v" / "train.parquet", verl_rows(9))
    write_parquet(tmp_path / "v" / "test.parquet", verl_rows(3))
    d = load_domain(DatasetDomain(path=str(tmp_path / "v"), answer_key="reward_model.ground_truth",
                                  eval={"split": "test"}), 0)
    assert (len(d.train), len(d.eval)) == (9, 3)


def test_eval_fraction_is_seeded(verl_file):
    ref = DatasetDomain(path=verl_file, answer_key="reward_model.ground_truth", eval={"fraction": 0.2})
    a, b, c = (load_domain(ref, s) for s in (1, 1, 2))
    assert len(a.eval) == 6 and a.eval == b.eval and a.eval != c.eval


@pytest.mark.parametrize("change, message", [
    ({"answer_key": "reward_model.truth"}, "row 1: missing key 'reward_model.truth' (answer_key; keys: data_source, prompt"),
    ({"prompt_key": "question"}, "row 1: missing key 'question' (prompt_key"),
    ({"source_key": "data_source", "sources": ["gsm8k", "aime"]}, "unknown source 'aime'"),
    ({"source_key": "origin"}, "row 1: missing key 'origin' (source_key"),
    ({"prompt_key": "ability", "answer_key": "extra_info"}, "'extra_info' must be text or a number, got dict"),
])
def test_bad_mapping_is_one_line_naming_file_row_and_key(verl_file, change, message):
    ref = DatasetDomain(**{"path": verl_file, "answer_key": "reward_model.ground_truth", **change})
    with pytest.raises(DomainError) as err:
        load_domain(ref, 0)
    assert message in str(err.value) and verl_file in str(err.value) and "\n" not in str(err.value)


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(DomainError, match="not a readable parquet file"):
        load_domain(DatasetDomain(path=str(bad)), 0)
    with pytest.raises(DomainError, match="file not found"):
        load_domain(DatasetDomain(path=str(tmp_path / "nope.parquet")), 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DomainError, match="no train.parquet"):
        load_domain(DatasetDomain(path=str(tmp_path / "empty")), 0)


# ---- reward plugins ------------------------------------------------------------------------------

VERL_PLUGIN = '''
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    ok = solution_str.strip().endswith(ground_truth)
    return {"score": float(ok), "len": float(len(solution_str)), "is_" + data_source: 1.0, "note": "text"}
'''
TRL_PLUGIN = '''
def reward(completions, ground_truth, ability, **kwargs):
    assert ability == ["math"] and len(kwargs["prompts"]) == 1
    return [1.0 if c[0]["content"].strip() == g else 0.0 for c, g in zip(completions, ground_truth)]
'''
RAISING_PLUGIN = '''
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    if "boom" in solution_str:
        raise RuntimeError("plugin bug")
    return 1
'''


def plugin(tmp_path: Path, code: str, name: str = "reward.py") -> Path:
    p = tmp_path / name
    p.write_text(code)
    return p


def test_verl_signature_plugin_gets_source_truth_and_extra_keys(verl_file, tmp_path):
    p = plugin(tmp_path, VERL_PLUGIN)
    d = load_domain(DatasetDomain(path=verl_file, answer_key="reward_model.ground_truth", source_key="data_source",
                                  sources=["kodcode"], verifier={"function": f"{p}:compute_score"}), 0)
    s = d.train[0]
    assert d.verifier.kind == "verl"
    score, parts = d.reward(f"so {s.answer}", s)
    assert score == 1.0 and parts == {"len": float(len(f"so {s.answer}")), "is_kodcode": 1.0}
    assert d.score("wrong", s) == 0.0


def test_trl_signature_plugin_gets_columns_as_lists(verl_file, tmp_path):
    p = plugin(tmp_path, TRL_PLUGIN)
    d = load_domain(DatasetDomain(path=verl_file, answer_key="reward_model.ground_truth",
                                  verifier={"function": f"{p}:reward"}), 0)
    s = d.train[0]
    assert d.verifier.kind == "trl"
    assert d.reward(s.answer, s) == (1.0, {}) and d.reward("x", s) == (0.0, {})


def test_module_plugin_and_jsonl_domain(tmp_path, monkeypatch):
    pkg = tmp_path / "myrewards"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "exact.py").write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
                                  "    return solution_str == ground_truth\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": "2"}\n')
    d = load_domain(JsonlDomain(path=str(data), verifier={"function": "myrewards.exact:compute_score"}), 0)
    s = d.train[0]
    assert d.score(s.answer, s) == 1.0 and d.score("nope", s) == 0.0


def test_raising_plugin_scores_zero_counts_and_keeps_the_first_traceback(verl_file, tmp_path):
    p = plugin(tmp_path, RAISING_PLUGIN, "raising.py")
    d = load_domain(DatasetDomain(path=verl_file, answer_key="reward_model.ground_truth",
                                  verifier={"function": f"{p}:compute_score"}), 0)
    s = d.train[0]
    rewards, parts = score_rollout(["fine", "boom", "boom again", "ok"], [(d, s)] * 4)
    assert rewards.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert reward_part_values([type("NB", (), {"parts": parts})()]) == {f"reward/{PLUGIN_ERRORS}": 2.0}
    assert "RuntimeError: plugin bug" in d.verifier.first_error and "raising.py" in d.verifier.first_error


@pytest.mark.parametrize("code, ref, message", [
    ("import nonexistent_module_xyz\n", "reward.py:f", "cannot import"),
    ("def g(x): return 1\n", "reward.py:f", "has no function 'f'"),
    ("def f(x, y): return 1\n", "reward.py:f", "takes neither verl's solution_str nor TRL's completions"),
])
def test_plugin_that_cannot_load_fails_when_the_domain_loads(verl_file, tmp_path, code, ref, message):
    plugin(tmp_path, code)
    with pytest.raises(DomainError) as err:
        load_domain(DatasetDomain(path=verl_file, answer_key="reward_model.ground_truth",
                                  verifier={"function": f"{tmp_path}/{ref}"}), 0)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_plugin_pickles_by_reference(tmp_path):
    p = plugin(tmp_path, VERL_PLUGIN)
    v = pickle.loads(pickle.dumps(RewardPlugin(f"{p}:compute_score")))
    assert v("7", Sample("q", "7", row={"data_source": "x"})) == 1.0


def test_format_reward_shapes_training_reward_not_accuracy():
    d = Domain("k", (), (), score_exact, format_reward=0.2)
    s = Sample("q", "7")
    assert d.reward("<answer>7</answer>", s) == (0.2, {"correct": 0.0, "format": 1.0})  # exact: whole text differs
    assert d.reward("7", s) == (0.8, {"correct": 1.0, "format": 0.0})
    assert d.score("7", s) == 1.0


# ---- prompts as the model sees them ------------------------------------------------------------

def test_chat_prompts_use_the_tokenizer_template():
    from trainer.models import build_char_tokenizer

    tok = build_char_tokenizer(set("abcdefghijklmnopqrstuvwxyz<>|:?+= 0123456789\n"))
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+1?"}]
    assert render_prompt(tok, msgs) == "be brief\n1+1?"  # no template: contents one per line
    assert render_prompt(tok, "1+1?") == "1+1?"
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    assert render_prompt(tok, msgs) == "<|system|>be brief\n<|user|>1+1?\n<|assistant|>"
    assert render_prompt(tok, "1+1?") == "<|user|>1+1?\n<|assistant|>"  # text: one user message, as before
    ids, mask = encode_prompts(tok, [msgs, "1+1?"])
    assert ids.shape[0] == 2 and int(mask[0].sum()) == len("<|system|>be brief\n<|user|>1+1?\n<|assistant|>")


# ---- spec and path confinement ---------------------------------------------------------------------

def two(domain) -> dict:
    return {"name": "x", "experts": [{"name": "a", "domain": domain}, {"name": "b", "domain": "builtin:grid"}]}


def test_paths_outside_the_roots_are_refused_naming_the_field(tmp_path):
    inside, outside = tmp_path / "in", tmp_path / "out"
    spec = parse_spec(two({"type": "dataset", "path": str(outside / "t.parquet"), "eval": {"path": str(inside / "e.parquet")},
                           "verifier": {"function": f"{outside}/r.py:f"}}))
    with pytest.raises(SpecError) as err:
        check_data_paths(spec, [inside.resolve()])
    msg = str(err.value)
    assert msg.startswith("experts.0.domain.path: ") and "experts.0.domain.verifier.function" in msg
    assert "eval.path" not in msg and "\n" not in msg
    check_data_paths(spec, [tmp_path.resolve()])  # all under tmp_path
    (inside).mkdir()
    (inside / "link.parquet").symlink_to(outside / "t.parquet")
    linked = parse_spec(two({"type": "dataset", "path": str(inside / "link.parquet")}))
    with pytest.raises(SpecError, match="outside the allowed data roots"):  # a symlink out is followed
        check_data_paths(linked, [inside.resolve()])
    check_data_paths(parse_spec(two({"type": "dataset", "hub": "openai/gsm8k"})), [inside.resolve()])  # no file


def test_module_plugins_are_not_paths():
    spec = parse_spec(two({"type": "dataset", "hub": "org/data", "verifier": {"function": "pkg.mod:score"}}))
    check_data_paths(spec, [])


def test_hub_id_loads_through_datasets(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load(name, split):  # no download in tests: the call and its answer stand in for the hub
        calls.append((name, split))
        n = 10 if split == "train" else 3
        return datasets.Dataset.from_list([{"question": f"{split} {i}?", "answer": f"#### {i}"} for i in range(n)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    d = load_domain(DatasetDomain(hub="openai/gsm8k", prompt_key="question", eval={"split": "test"},
                                  verifier="numeric", extract="hash"), 0)
    assert calls == [("openai/gsm8k", "train"), ("openai/gsm8k", "test")]
    assert (len(d.train), len(d.eval)) == (10, 3) and d.key == "dataset:hub:openai/gsm8k"
    assert d.score("so #### 2", d.eval[2]) == 1.0 and d.score("2 #### 1", d.eval[2]) == 0.0

    def offline(name, split):
        raise ConnectionError("no network\nmore lines")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DomainError, match=r"^hub:other/set\[train\]: cannot load \(ConnectionError: no network\)$"):
        load_domain(DatasetDomain(hub="other/set"), 0)

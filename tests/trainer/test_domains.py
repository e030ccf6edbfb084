"""Domains: builtin splits (sizes, disjointness, determinism, labels checked by an independent solver),
jsonl loading and its one-line errors, and load_domain's registry."""

from __future__ import annotations

import doctest
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import trainer.domains
from trainer.domains import BUILTINS, DomainError, Sample, arith, frames, grid, load_domain, marked
from trainer.domains.base import held_out
from trainer.models import tiny_recipe_hash
from contract.spec import TinyModelSpec
from trainer.domains.names import BUILTIN_DOMAINS
from trainer.spec import JsonlDomain

from contract.vocab import VISUAL_DOMAINS

# The text builtins; the rendered image / video ones (prompts told apart by their pictures) are tested in test_vlm.py.
BUILTIN_NAMES = [n for n in BUILTIN_DOMAINS if n not in VISUAL_DOMAINS]


# ---------------------------------------------------------------- independent solvers of the builtin prompts


def solve_arith(prompt: str) -> str:
    m = re.fullmatch(r"(\d\d)([+-])(\d\d)=", prompt)
    assert m, prompt
    a, op, b = int(m[1]), m[2], int(m[3])
    assert op == "+" or a >= b, prompt
    return str(a + b if op == "+" else a - b)


def solve_grid(prompt: str) -> str:
    m = re.fullmatch(r"((?:[.#o@]{4}/){2}[.#o@]{4})\|([#@])\?", prompt)
    assert m, prompt
    picture, q = m[1], m[2]
    assert picture.count("@") == 1, prompt
    if q == "#":
        return str(picture.count("#"))
    row = next(i for i, r in enumerate(picture.split("/")) if "@" in r)
    return f"{row + 1}{picture.split('/')[row].index('@') + 1}"


def solve_frames(prompt: str) -> str:
    clip, q = prompt.split("|")
    strips = clip.split("/")
    width = len(strips[0])
    assert len(strips) in (3, 4) and 4 <= width <= 6, prompt
    assert all(re.fullmatch(r"[.ox#]*", f) and len(f) == width for f in strips), prompt
    walls = [c for c in range(width) if all(f[c] == "#" for f in strips)]
    assert len(walls) <= 1 and all(f.count("x") == 1 or (walls and "x" not in f) for f in strips), prompt
    pos = [f.index("x") if "x" in f else walls[0] for f in strips]  # hidden means behind the wall
    assert sum(p in walls for p in pos) <= 1, f"hidden twice: {prompt}"
    steps = {b - a for a, b in zip(pos, pos[1:])}
    assert len(steps) == 1, f"not constant velocity: {prompt}"
    v = steps.pop()
    assert abs(v) <= 2, prompt
    moved = pos[-1] - pos[0]
    if q == "n?":
        assert 0 <= pos[-1] + v < width, prompt
        return str(pos[-1] + v + 1)
    return {"d?": str(moved), "v?": "R" if moved > 0 else "L" if moved < 0 else "S"}[q]


def solve_conflict(name: str):
    """Independent solver of the conflict domains (trainer/domains/marked.py) from their documented rules."""
    fn = {"sum": lambda x, y: x + y, "absdiff": lambda x, y: abs(x - y), "max": max,
          "0": lambda x, y: x + y, "1": lambda x, y: x + y + 1, "2": lambda x, y: x + y + 2}[name.rsplit("_", 1)[1]]
    marker = {"marked_sum": "a", "marked_absdiff": "b", "marked_max": "c", "offset_0": "a", "offset_1": "b",
              "offset_2": "c"}.get(name.removeprefix("builtin:"), "")

    def solve(prompt: str) -> str:
        m = re.fullmatch(re.escape(marker) + r"(\d+),(\d+)=", prompt)
        assert m, prompt
        x, y = int(m.group(1)), int(m.group(2))
        if name.startswith("builtin:implicit_"):  # the range of x names the domain
            assert {"sum": range(0, 40), "absdiff": range(40, 80), "max": range(80, 120)}[name.rsplit("_", 1)[1]].count(x)
        return str(fn(x, y))

    return solve


SOLVERS = {"builtin:arith": solve_arith, "builtin:grid": solve_grid, "builtin:frames": solve_frames,
           **{n: solve_conflict(n) for n in BUILTIN_NAMES if n not in ("builtin:arith", "builtin:grid", "builtin:frames")}}


# ---------------------------------------------------------------- builtins


def test_registry_lists_the_builtin_names():
    assert tuple(BUILTINS) == BUILTIN_DOMAINS
    assert tuple(SOLVERS) == tuple(n for n in BUILTIN_DOMAINS if n not in VISUAL_DOMAINS)


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_builtin_sizes_and_disjoint_splits(name):
    d = load_domain(name, seed=0)
    assert d.key == name
    assert len(d.train) == 4000 and len(d.eval) == 512
    train_prompts, eval_prompts = {s.prompt for s in d.train}, {s.prompt for s in d.eval}
    assert len(train_prompts) == 4000 and len(eval_prompts) == 512  # no duplicates within a split
    assert not train_prompts & eval_prompts


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_builtin_is_deterministic_from_the_seed(name):
    a, b, other = BUILTINS[name](7), BUILTINS[name](7), BUILTINS[name](8)  # fresh builds, not the cache
    assert a.train == b.train and a.eval == b.eval
    assert a.eval != other.eval
    # a conflict domain's train split is the same for every seed (so runs of many seeds share a base model)
    assert (a.train == other.train) == (name in marked.KEYS)


@pytest.mark.parametrize("name", marked.KEYS)
def test_conflict_domains_hold_out_one_pool_for_every_seed_and_share_a_base_model(name):
    seeds = [BUILTINS[name](s) for s in range(4)]
    train = {s.prompt for s in seeds[0].train}
    assert all(held_out(name, s.prompt) for d in seeds for s in d.eval)
    assert not any(held_out(name, p) for p in train)
    assert not train & set().union(*({s.prompt for s in d.eval} for d in seeds))
    recipe = TinyModelSpec()
    assert len({tiny_recipe_hash(recipe, [d, load_domain("builtin:grid", i)]) for i, d in enumerate(seeds)}) == 1


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_builtin_labels_are_right_and_verified(name):
    d = load_domain(name, seed=0)
    solve = SOLVERS[name]
    for s in (*d.train, *d.eval):
        assert s.answer == solve(s.prompt)
        assert d.score(s.answer, s) == 1.0
        assert d.score(f" {s.answer}\n", s) == 1.0  # exact match on the stripped completion
        assert d.score(s.answer + "1", s) == 0.0
        assert d.score("", s) == 0.0


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_builtin_fits_a_char_level_model(name):
    d = load_domain(name, seed=0)
    assert max(len(s.prompt) for s in (*d.train, *d.eval)) <= 28
    assert all(1 <= len(s.answer) <= 3 for s in (*d.train, *d.eval))
    assert len(d.alphabet()) <= 24


def test_builtins_share_a_small_alphabet():
    union = set().union(*(load_domain(n).alphabet() for n in BUILTIN_NAMES))
    assert len(union) <= 32 and all(c.isascii() and c.isprintable() and c != " " for c in union)


def test_every_question_kind_and_answer_is_represented():
    g, f = load_domain("builtin:grid"), load_domain("builtin:frames")
    assert {s.prompt[-2:] for s in g.eval} == {"#?", "@?"}
    assert {s.answer for s in g.eval if s.prompt.endswith("@?")} == {f"{r}{c}" for r in "123" for c in "1234"}
    assert {s.prompt[-2:] for s in f.eval} == {"d?", "v?", "n?"}
    assert any("#" in s.prompt and s.prompt.count("x") < s.prompt.count("/") + 1 for s in f.eval)  # hidden x
    assert {s.answer for s in f.eval if s.prompt.endswith("v?")} == {"L", "R", "S"}
    assert {s.prompt.count("/") for s in f.eval} == {2, 3}  # 3 and 4 frames
    assert {s.prompt.index("/") for s in f.eval} == {4, 5, 6}  # widths
    assert any("-" in s.prompt for s in load_domain("builtin:arith").eval)


def test_load_domain_caches():
    assert load_domain("builtin:grid", 3) is load_domain("builtin:grid", 3)
    assert load_domain("builtin:grid", 3) is not load_domain("builtin:grid", 4)


def test_unknown_builtin():
    with pytest.raises(DomainError) as err:
        load_domain("builtin:chess")
    msg = str(err.value)
    assert "builtin:chess" in msg and all(n in msg for n in BUILTIN_NAMES) and "\n" not in msg


def test_wrong_ref_type():
    with pytest.raises(DomainError, match="dict"):
        load_domain({"type": "jsonl", "path": "x.jsonl"})  # type: ignore[arg-type]


@pytest.mark.parametrize("module", [trainer.domains, arith, grid, frames, marked])
def test_module_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted >= 1 and result.failed == 0


def test_package_does_not_import_torch():
    code = "import sys, trainer.domains; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


# ---------------------------------------------------------------- jsonl


def write(tmp_path: Path, text: str, name: str = "mine.jsonl") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def records(n: int) -> str:
    return "\n".join(json.dumps({"prompt": f"{i}*2=", "answer": i * 2}) for i in range(n)) + "\n"


def test_jsonl_happy_path(tmp_path):
    path = write(tmp_path, records(20) + "\n  \n")  # blank lines skipped
    d = load_domain(JsonlDomain(path=path, verifier="numeric"), seed=0)
    assert d.key == f"jsonl:{path}"
    assert len(d.eval) == 2 and len(d.train) == 18  # eval_fraction 0.1 of 20
    assert not {s.prompt for s in d.train} & {s.prompt for s in d.eval}
    assert {s.prompt for s in (*d.train, *d.eval)} == {f"{i}*2=" for i in range(20)}
    s = next(x for x in d.train if x.prompt == "3*2=")
    assert s == Sample("3*2=", "6")  # numbers become their text
    assert d.score("It is 6.0", s) == 1.0 and d.score("7", s) == 0.0


def test_jsonl_split_depends_on_seed_only(tmp_path):
    path = write(tmp_path, records(30))
    spec = JsonlDomain(path=path, eval_fraction=0.2)
    evals = [{s.prompt for s in load_domain(spec, seed).eval} for seed in range(5)]
    assert all(len(e) == 6 for e in evals)
    assert evals[0] == {s.prompt for s in load_domain(JsonlDomain(path=path, eval_fraction=0.2), 0).eval}
    assert len({frozenset(e) for e in evals}) > 1


def test_jsonl_custom_fields_verifier_and_tolerance(tmp_path):
    lines = [{"q": "pi?", "a": "3.1416", "extra": 1}, {"q": "e?", "a": 2.71828}, {"q": "phi?", "a": "1.618"}]
    path = write(tmp_path, "\n".join(json.dumps(x) for x in lines))
    d = load_domain(JsonlDomain(path=path, prompt_field="q", answer_field="a", verifier="numeric",
                                tolerance=0.01, eval_fraction=0.5), seed=1)
    assert len(d.eval) == 2 and len(d.train) == 1  # round(0.5 * 3) = 2, capped to leave one for train
    for s in (*d.train, *d.eval):
        assert d.score(str(float(s.answer) + 0.005), s) == 1.0
        assert d.score(str(float(s.answer) + 0.05), s) == 0.0


def test_jsonl_same_prompt_stays_on_one_side(tmp_path):
    lines = [{"prompt": "p", "answer": "1"}, {"prompt": "p", "answer": "2"}, {"prompt": "q", "answer": "3"}]
    path = write(tmp_path, "\n".join(json.dumps(x) for x in lines))
    for seed in range(6):
        d = load_domain(JsonlDomain(path=path), seed)
        assert {len(d.train), len(d.eval)} == {1, 2}
        assert not {s.prompt for s in d.train} & {s.prompt for s in d.eval}


def test_jsonl_edited_file_is_read_again(tmp_path):
    path = write(tmp_path, records(10))
    spec = JsonlDomain(path=path)
    assert len(load_domain(spec).train) == 9
    write(tmp_path, records(30))
    assert len(load_domain(spec).train) == 27


@pytest.mark.parametrize("text,where,expected", [
    ('{"prompt": "a", "answer": "1"}\n{"prompt": "b"}\n', ":2:", "missing field 'answer'"),
    ('{"answer": "1"}\n', ":1:", "missing field 'prompt'"),
    ('{"prompt": "a", "answer": "1"}\n\n{"prompt": "b" "answer": "2"}\n', ":3:",
     "not valid JSON (Expecting ',' delimiter)"),
    ('{"prompt": "a", "answer": 1}\n[1, 2]\n', ":2:", "expected a JSON object, got an array"),
    ('{"prompt": "", "answer": "1"}\n', ":1:", "field 'prompt' must be a non-empty string"),
    ('{"prompt": 5, "answer": "1"}\n', ":1:", "field 'prompt' must be a non-empty string, got a number"),
    ('{"prompt": "a", "answer": null}\n', ":1:", "field 'answer' must be a non-empty string or a finite number"),
    ('{"prompt": "a", "answer": true}\n', ":1:", "got a boolean"),
    ('{"prompt": "a", "answer": NaN}\n', ":1:", "field 'answer' must be a non-empty string or a finite number"),
    ('{"prompt": "a", "answer": "  "}\n', ":1:", "field 'answer'"),
    ('{"prompt": "a", "answer": ' + "[" * 100_000 + "\n", ":1:", "not valid JSON"),
    ("", ":", "no records"),
    ("\n   \n\n", ":", "no records"),
    ('{"prompt": "a", "answer": "1"}\n', ":", "needs at least 2"),
    ('{"prompt": "a", "answer": "1"}\n{"prompt": "a", "answer": "2"}\n', ":", "needs at least 2"),
])
def test_jsonl_errors_name_file_line_and_field(tmp_path, text, where, expected):
    path = write(tmp_path, text)
    with pytest.raises(DomainError) as err:
        load_domain(JsonlDomain(path=path))
    msg = str(err.value)
    assert msg.startswith(path + where) and expected in msg and "\n" not in msg, msg


def test_jsonl_file_not_found(tmp_path):
    path = str(tmp_path / "missing.jsonl")
    with pytest.raises(DomainError, match=re.escape(f"{path}: file not found")):
        load_domain(JsonlDomain(path=path))


def test_jsonl_not_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"prompt": "café", "answer": "1"}\n'.encode("latin-1"))
    with pytest.raises(DomainError, match="not UTF-8"):
        load_domain(JsonlDomain(path=str(path)))


def test_jsonl_line_numbers_ignore_unicode_line_separators(tmp_path):
    # U+2028 inside a JSON string is not a line end: the bad record is still on line 2.
    path = write(tmp_path, json.dumps({"prompt": "a\u2028b", "answer": "1"}, ensure_ascii=False) + "\n{}\n")
    with pytest.raises(DomainError, match=r":2: missing field 'prompt'"):
        load_domain(JsonlDomain(path=path))

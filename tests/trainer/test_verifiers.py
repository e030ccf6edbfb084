"""Verifiers: right, wrong and malformed completions, with values written here; plus the module's doctests."""

from __future__ import annotations

import doctest
import pickle
import threading

import pytest

from trainer import spec
from trainer.domains import verifiers
from trainer.domains.base import Sample
from trainer.domains.verifiers import (VERIFIERS, parse_choice, parse_number, score_choice, score_exact,
                                       score_math, score_numeric, score_regex)

MALFORMED = ["", "   ", "\n\t", "\x00\x01\x02", "🙂" * 500, "ÿ" * 10_000, "x" * 100_000, "1" * 5000,
             "(((((((((", "\\frac{", "$$$$", "Answer:", "}{" * 1000, "\u202e\u2028\u0301"]


def s(answer: str) -> Sample:
    """A sample whose prompt does not matter to the verifier."""
    return Sample(prompt="q", answer=answer)


def test_registry_matches_spec_names():
    assert tuple(VERIFIERS) == spec.VERIFIERS


@pytest.mark.parametrize("name", list(VERIFIERS))
@pytest.mark.parametrize("completion", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_completion_scores_zero(name, completion):
    score = VERIFIERS[name](tolerance=1e-6)(completion, s("42"))
    assert score == 0.0 and isinstance(score, float)


@pytest.mark.parametrize("name", list(VERIFIERS))
@pytest.mark.parametrize("answer", ["", "   ", "(", "a{99999999999}", "(" * 2000 + ")" * 2000, "\\frac{"])
def test_malformed_answer_scores_zero_without_raising(name, answer):
    assert VERIFIERS[name]()("B 42", s(answer)) == 0.0


def test_factories_accept_and_ignore_options_they_do_not_use():
    assert VERIFIERS["exact"](tolerance=0.5) is score_exact
    with pytest.raises(ValueError, match="tolerance"):
        VERIFIERS["numeric"](tolerance=-1.0)


RIGHT = {"exact": ("3", "3"), "numeric": ("3.2", "3"), "choice": ("B", "(B)"), "regex": ("A", "[AB]"),
         "math": ("1/2", "0.5")}


@pytest.mark.parametrize("name", list(VERIFIERS))
def test_verifiers_pickle(name):  # so a Domain's verifier can travel to a worker process
    v = pickle.loads(pickle.dumps(VERIFIERS[name](tolerance=0.5)))
    completion, answer = RIGHT[name]
    assert v(completion, s(answer)) == 1.0


def test_exact():
    assert score_exact("85", s("85")) == 1.0
    assert score_exact("  85 \n", s("85")) == 1.0
    assert score_exact("85", s(" 85\n")) == 1.0
    assert score_exact("850", s("85")) == 0.0
    assert score_exact("8 5", s("85")) == 0.0
    assert score_exact("r", s("R")) == 0.0  # case matters


@pytest.mark.parametrize("text,value", [
    ("85", "85"), ("-3", "-3"), ("+7", "7"), ("\u22124", "-4"), ("1,234", "1234"), ("1,234,567.5", "1234567.5"),
    ("0.5", "0.5"), (".5", "0.5"), ("2.5e3", "2500"), ("The answer is 42.", "42"), ("x = -0.25, y = 3", "-0.25"),
    ("1,2345", "1"), ("12 apples and 13 pears", "12"), ("3-5", "3"),
])
def test_parse_number(text, value):
    assert parse_number(text) == parse_number(value) is not None
    assert str(parse_number(text).normalize()) == str(parse_number(value).normalize())


def test_numeric():
    assert score_numeric("85", s("85")) == 1.0
    assert score_numeric("It is 85 apples", s("85")) == 1.0
    assert score_numeric("85.0", s("85")) == 1.0
    assert score_numeric("1,234", s("1234")) == 1.0
    assert score_numeric("1234", s("1,234")) == 1.0
    assert score_numeric("-2", s("-2")) == 1.0
    assert score_numeric("2", s("-2")) == 0.0
    assert score_numeric("86", s("85")) == 0.0
    assert score_numeric("eighty-five", s("85")) == 0.0
    assert score_numeric("1e999999999", s("1e-999999999")) == 0.0  # beyond Decimal's range: no raise


def test_numeric_tolerance_is_absolute_and_inclusive():
    near = VERIFIERS["numeric"](tolerance=0.01)
    assert near("3.14", s("3.1416")) == 1.0
    assert near("3.13", s("3.1416")) == 0.0
    assert VERIFIERS["numeric"](tolerance=0.1)("0.6", s("0.5")) == 1.0  # exactly 0.1 away
    assert VERIFIERS["numeric"]()("3.14", s("3.1416")) == 0.0  # default 1e-6


@pytest.mark.parametrize("completion,letter", [
    ("B", "B"), ("b", "B"), ("(B)", "B"), ("(c)", "C"), ("B.", "B"), ("Answer: C", "C"), ("answer: d", "D"),
    ("The answer is (E).", "E"), ("the answer is a", "A"), ("I'd say B", "B"), ("It's a trick: D", "D"),
    ("the answer is a guess, C", "C"), ("Answer: C because", "C"), ("A) 3", "A"),
])
def test_parse_choice(completion, letter):
    assert parse_choice(completion) == letter


@pytest.mark.parametrize("completion", ["F", "Because", "Abc", "I'd", "BB", "answer", "42"])
def test_parse_choice_none(completion):
    assert parse_choice(completion) is None


def test_choice():
    assert score_choice("Answer: C", s("C")) == 1.0
    assert score_choice("(c)", s("C")) == 1.0
    assert score_choice("C", s("(c)")) == 1.0
    assert score_choice("B", s("C")) == 0.0
    assert score_choice("Cats", s("C")) == 0.0
    assert score_choice("C", s("42")) == 0.0  # the answer holds no letter


def test_regex():
    assert score_regex("123", s(r"\d+")) == 1.0
    assert score_regex("  123 \n", s(r"\d+")) == 1.0
    assert score_regex("12a", s(r"\d+")) == 0.0  # fullmatch, not search
    assert score_regex("yes", s("(?i)YES|Y")) == 1.0
    assert score_regex("123", s("(")) == 0.0
    assert score_regex("aaa", s("a{99999999999}")) == 0.0
    assert score_regex("a", s("[z-a]")) == 0.0


@pytest.mark.parametrize("completion,answer", [
    ("0.5", r"\frac{1}{2}"), (r"\frac{1}{2}", "0.5"), ("1/2", "0.5"), (r"$\frac{1}{2}$", "1/2"),
    (r"so the result is \boxed{0.5}", r"$\frac{1}{2}$"), ("x^2+1", "1+x^2"), ("1,234", "1234"), ("-3", "-3"),
])
def test_math_right(completion, answer):
    assert score_math(completion, s(answer)) == 1.0


@pytest.mark.parametrize("completion,answer", [
    ("1/3", r"\frac{1}{2}"), ("0.6", "0.5"), ("3", "-3"), ("half", "0.5"), ("x^2-1", "x^2+1"),
])
def test_math_wrong(completion, answer):
    assert score_math(completion, s(answer)) == 0.0


def test_math_in_a_worker_thread():  # math-verify's SIGALRM timeouts only work on the main thread
    results: list[float] = []
    t = threading.Thread(target=lambda: results.extend(
        [score_math("0.5", s(r"\frac{1}{2}")), score_math("0.4", s(r"\frac{1}{2}")), score_math("", s("1"))]))
    t.start()
    t.join(timeout=30)
    assert results == [1.0, 0.0, 0.0]


def test_doctests():
    result = doctest.testmod(verifiers)
    assert result.attempted >= 10 and result.failed == 0

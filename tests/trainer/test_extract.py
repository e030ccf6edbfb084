"""Answer extraction of the numeric and exact verifiers, on hand-written completions of reasoning models."""

from __future__ import annotations

import pickle

import pytest

from trainer.domains.base import Sample
from trainer.domains.verifiers import (VERIFIERS, extract_answer, extract_boxed, has_answer_tag, parse_number,
                                       score_exact, score_numeric)

REASONING = "3 apples plus 4 is 3+4=7. The answer is 7."


def s(answer: str) -> Sample:
    return Sample(prompt="q", answer=answer)


def test_numeric_default_reads_the_last_number():
    assert score_numeric(REASONING, s("7")) == 1.0
    assert score_numeric("3 + 4 = 7", s("7")) == 1.0
    assert VERIFIERS["numeric"]()(REASONING, s("7")) == 1.0
    assert VERIFIERS["numeric"]()("3 + 4 = 7", s("7")) == 1.0
    assert VERIFIERS["numeric"]()("7 is wrong, it is 8", s("7")) == 0.0


def test_numeric_first_keeps_the_old_behaviour():
    first = VERIFIERS["numeric"](extract="first")
    assert first(REASONING, s("7")) == 0.0   # reads the 3
    assert first("3 + 4 = 7", s("7")) == 0.0
    assert first("7 is wrong, it is 8", s("7")) == 1.0


@pytest.mark.parametrize("extract,completion,score", [
    ("hash", "3+4=7 and 2 more ... #### 7", 1.0),
    ("hash", "#### 7\nthen I said 9", 1.0),
    ("hash", "the answer is 7", 0.0),               # no ####: nothing read
    ("boxed", r"3+4 = 7, so \boxed{7}. Check: 8-1", 1.0),
    ("boxed", r"\boxed{6} no wait \boxed{7}", 1.0),  # the last box
    ("boxed", "7", 0.0),
    ("answer_tag", "<think>3+4=7, or 8?</think><answer>7</answer>", 1.0),
    ("answer_tag", "<think>7</think> 8", 0.0),
    ("answer_tag", "<answer>x = 7 apples</answer>", 1.0),
    ("last", "7 8", 0.0),
    ("first", "7 8", 1.0),
])
def test_numeric_extract_modes(extract, completion, score):
    assert VERIFIERS["numeric"](extract=extract)(completion, s("7")) == score


def test_exact_extract_modes():
    assert VERIFIERS["exact"]() is score_exact  # default: the whole completion, as before
    assert score_exact("The answer is B.", s("B")) == 0.0
    assert VERIFIERS["exact"](extract="last")("The answer is B.", s("B")) == 1.0
    assert VERIFIERS["exact"](extract="first")("B, because", s("B")) == 1.0
    assert VERIFIERS["exact"](extract="answer_tag")("<think>A?</think><answer> B </answer>", s("B")) == 1.0
    assert VERIFIERS["exact"](extract="boxed")(r"\boxed{x^{2}}", s("x^{2}")) == 1.0
    assert VERIFIERS["exact"](extract="hash")("no marker", s("B")) == 0.0


def test_extract_helpers():
    assert extract_boxed(r"\boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert extract_boxed(r"\boxed{unclosed") is None
    assert extract_answer("#### 1,234 apples\nmore", "hash") == "1,234 apples"
    assert extract_answer("", "last") is None
    assert parse_number("1 then 2 then -3.5", "last") == parse_number("-3.5")
    assert has_answer_tag("<ANSWER>7</ANSWER>") and not has_answer_tag("<answer>7")


def test_unknown_extract_is_refused():
    with pytest.raises(ValueError, match="extract"):
        VERIFIERS["numeric"](extract="middle")


def test_extracting_verifiers_pickle():
    v = pickle.loads(pickle.dumps(VERIFIERS["numeric"](extract="boxed")))
    assert v(r"\boxed{7}", s("7")) == 1.0

r"""Verifiers: pure `score(completion, sample) -> float` functions, and the registry that names them.

A verifier returns 1.0 (right) or 0.0 (wrong) and never raises on a malformed completion: empty,
whitespace, garbage, very long or any unicode text scores 0.0. A sample whose answer the verifier cannot
read (no number for `numeric`, no letter for `choice`, a bad pattern for `regex`) also scores 0.0.

>>> score = VERIFIERS["numeric"](tolerance=0.01)
>>> score("about 3.14", Sample("pi to two places?", "3.1416"))
1.0
"""

from __future__ import annotations

import functools
import math
import re
import threading
from decimal import Decimal
from typing import Any, Callable

from math_verify import parse, verify
from math_verify.errors import TimeoutException

from trainer.domains.base import Sample, Verifier

# A factory takes the domain's options (e.g. `tolerance`) and returns a verifier. Every factory accepts
# and ignores options it has no use for, so a caller can pass a jsonl spec's options uniformly.
VerifierFactory = Callable[..., Verifier]


# ---------------------------------------------------------------- exact


def score_exact(completion: str, sample: Sample) -> float:
    r"""1.0 when the stripped completion equals the stripped answer.

    >>> score_exact(" 85\n", Sample("37+48=", "85"))
    1.0
    >>> score_exact("58", Sample("37+48=", "85"))
    0.0
    """
    return float(completion.strip() == sample.answer.strip())


# ---------------------------------------------------------------- numeric

# Optional sign (ASCII or U+2212 minus), then digits with optional thousands commas ("1,234" but not
# "1,2345"), optional decimals or a bare ".5", optional exponent. Not preceded by a digit or a dot, so a
# match never starts in the middle of a longer number.
_NUMBER_RE = re.compile(
    r"(?<![0-9.])([-+\u2212]?)"
    r"((?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.[0-9]+)?|\.[0-9]+)"
    r"(?:[eE]([-+]?[0-9]+))?"
)


def parse_number(text: str) -> Decimal | None:
    """The first number in `text` (thousands commas allowed), or None when there is none.

    >>> parse_number("The answer is -1,234.5 apples")
    Decimal('-1234.5')
    >>> parse_number("no digits here") is None
    True
    """
    m = _NUMBER_RE.search(text)
    if m is None:
        return None
    sign, body, exponent = m.groups()
    literal = ("-" if sign in ("-", "\u2212") else "") + body.replace(",", "")
    return Decimal(literal + (f"e{exponent}" if exponent else ""))


def score_numeric(completion: str, sample: Sample, tolerance: float = 1e-6) -> float:
    """1.0 when the completion's first number is within `tolerance` (absolute) of the answer's.

    >>> score_numeric("It is 1,024.", Sample("2**10=", "1024"))
    1.0
    >>> score_numeric("0.33", Sample("1/3 to 2 places?", "0.333"), tolerance=0.01)
    1.0
    >>> score_numeric("unsure", Sample("2**10=", "1024"))
    0.0
    """
    pred, gold = parse_number(completion), parse_number(sample.answer)
    if pred is None or gold is None:
        return 0.0
    try:
        # Decimal(str(...)) so a tolerance of 0.1 means exactly 0.1, not its binary neighbour.
        return float(abs(pred - gold) <= Decimal(str(tolerance)))
    except ArithmeticError:  # exponents past Decimal's range
        return 0.0


# ---------------------------------------------------------------- choice

# A letter touching a word character or an apostrophe is not standalone, so "I'd" never reads as D.
_STANDALONE = r"(?<![\w'’])({})(?![\w'’])"
# "answer: X" counts only when X ends the sentence, so "the answer is a guess" is not read as A.
_ANSWER_PHRASE_RE = re.compile(r"answer\s*(?:is\s*)?[:=]?\s*\(?([a-e])\)?(?=\s*(?:[.,;:!?]|$))", re.IGNORECASE)
_UPPER_RE = re.compile(_STANDALONE.format("[A-E]"))
_LOWER_RE = re.compile(_STANDALONE.format("[a-e]"))


def parse_choice(text: str) -> str | None:
    """The chosen letter A–E in `text` (upper case), or None.

    An explicit "answer: X" / "answer is (X)" wins; else the first standalone capital A–E ("(B)", "B."),
    else the first standalone lower-case a–e, so the article "a" loses to a later capital.

    >>> parse_choice("Answer: c")
    'C'
    >>> parse_choice("I think it is a trick; (B).")
    'B'
    >>> parse_choice("Because") is None
    True
    """
    for pattern in (_ANSWER_PHRASE_RE, _UPPER_RE, _LOWER_RE):
        m = pattern.search(text)
        if m:
            return m.group(1).upper()
    return None


def score_choice(completion: str, sample: Sample) -> float:
    """1.0 when the completion picks the answer's letter (A–E, case-insensitive).

    >>> score_choice("The answer is (B).", Sample("Q? (A) 1 (B) 2", "B"))
    1.0
    >>> score_choice("A", Sample("Q? (A) 1 (B) 2", "B"))
    0.0
    """
    pred, gold = parse_choice(completion), parse_choice(sample.answer)
    return float(pred is not None and pred == gold)


# ---------------------------------------------------------------- regex


def score_regex(completion: str, sample: Sample) -> float:
    r"""1.0 when the answer, read as a regular expression, fullmatches the stripped completion.

    The pattern comes from the dataset's author and is trusted not to backtrack catastrophically.

    >>> score_regex(" 42 ", Sample("An even number?", r"\d*[02468]"))
    1.0
    >>> score_regex("42", Sample("bad pattern", "(4"))
    0.0
    """
    try:
        return float(re.fullmatch(sample.answer, completion.strip()) is not None)
    except (re.error, OverflowError, RecursionError):  # bad pattern, huge repeat count, deep nesting
        return 0.0


# ---------------------------------------------------------------- math


def _math_timeout() -> int | None:
    """math-verify's timeout in seconds: it uses SIGALRM, which only the main thread may set."""
    return 5 if threading.current_thread() is threading.main_thread() else None


# Text longer than this is never wrapped in $...$: math-verify's LaTeX parse of a long bare string takes
# seconds (2,000 nested parentheses: ~7 s), and bare LaTeX answers are short.
_WRAP_MAX_CHARS = 256


def _as_latex(text: str) -> str:
    """`text` in $...$ when it is short bare math, so "x^2+1" or "\\sqrt{2}" parse as LaTeX."""
    bare = "$" not in text and "\\boxed" not in text
    return f"${text}$" if bare and len(text) <= _WRAP_MAX_CHARS else text


@functools.lru_cache(maxsize=4096)
def _parse_gold(answer: str, timeout: int | None) -> tuple[Any, ...]:
    """Parsed reference answer; cached because every sample of a group shares it."""
    return tuple(parse(_as_latex(answer), parsing_timeout=timeout))


def score_math(completion: str, sample: Sample) -> float:
    r"""1.0 when math-verify finds the completion's answer equal to the reference (LaTeX or plain).

    >>> score_math("0.5", Sample("Half of one?", r"\frac{1}{2}"))
    1.0
    >>> score_math(r"so $x = \frac{2}{4}$", Sample("Solve 4x = 2.", "0.5"))
    1.0
    >>> score_math("1/3", Sample("Half of one?", "1/2"))
    0.0
    """
    timeout = _math_timeout()
    try:
        gold = list(_parse_gold(sample.answer.strip(), timeout))
        pred = parse(completion, parsing_timeout=timeout)
        bare = completion.strip()
        if not pred and bare and _as_latex(bare) != bare:  # a bare answer such as "x^2+1"
            pred = parse(_as_latex(bare), parsing_timeout=timeout)
        return float(bool(gold) and bool(pred) and verify(gold, pred, timeout_seconds=timeout))
    except (Exception, TimeoutException):  # TimeoutException is a BaseException; sympy raises anything
        return 0.0


# ---------------------------------------------------------------- registry


def make_exact(**_options: Any) -> Verifier:
    """The `exact` verifier (no options)."""
    return score_exact


def make_numeric(*, tolerance: float = 1e-6, **_options: Any) -> Verifier:
    """The `numeric` verifier with an absolute `tolerance`."""
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    # A partial of a module-level function, so the verifier pickles into worker processes.
    return functools.partial(score_numeric, tolerance=float(tolerance))


def make_choice(**_options: Any) -> Verifier:
    """The `choice` verifier (no options)."""
    return score_choice


def make_regex(**_options: Any) -> Verifier:
    """The `regex` verifier (no options)."""
    return score_regex


def make_math(**_options: Any) -> Verifier:
    """The `math` verifier (no options)."""
    return score_math


VERIFIERS: dict[str, VerifierFactory] = {
    "exact": make_exact,
    "numeric": make_numeric,
    "choice": make_choice,
    "regex": make_regex,
    "math": make_math,
}

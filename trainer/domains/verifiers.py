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

from trainer.domains.base import _ANSWER_TAG_RE, Sample, Verifier, has_answer_tag  # noqa: F401

# A factory takes the domain's options (e.g. `tolerance`) and returns a verifier. Every factory accepts
# and ignores options it has no use for, so a caller can pass a jsonl spec's options uniformly.
VerifierFactory = Callable[..., Verifier]


# ---------------------------------------------------------------- exact


def score_exact(completion: str, sample: Sample, extract: str = "whole") -> float:
    r"""1.0 when the stripped completion (or the part `extract` reads out of it) equals the stripped answer.

    >>> score_exact(" 85\n", Sample("37+48=", "85"))
    1.0
    >>> score_exact("58", Sample("37+48=", "85"))
    0.0
    >>> score_exact(r"so \boxed{85}", Sample("37+48=", "85"), extract="boxed")
    1.0
    """
    pred = completion if extract == "whole" else extract_answer(completion, extract)
    return float(pred is not None and pred.strip() == sample.answer.strip())


# ---------------------------------------------------------------- extraction

# How the answer is read out of a completion (the spec's `extract`):
#   last / first  the last / first number (numeric) or word (exact) of the completion
#   hash          the text after the last `####` (GSM8K's convention), up to the end of its line
#   boxed         the content of the last \boxed{...} (braces balanced)
#   answer_tag    the content of the last <answer>...</answer>
#   whole         the whole completion (exact's default)
EXTRACTS = ("last", "first", "hash", "boxed", "answer_tag", "whole")
_WORD_STRIP = ".,;:!?\"'()[]{}"


def extract_boxed(text: str) -> str | None:
    r"""The content of the last `\boxed{...}` (nested braces kept), or None.

    >>> extract_boxed(r"so \boxed{\frac{1}{2}} and not \boxed{3")
    '\\frac{1}{2}'
    """
    start = -1
    for m in re.finditer(r"\\boxed\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            start = m.end()
            found = text[start:i - 1]
    return found if start >= 0 else None


def extract_answer(text: str, how: str) -> str | None:
    """The answer part of a completion by `how` (one of EXTRACTS; first/last here mean words), or None.

    >>> extract_answer("Reasoning... #### 72\\n", "hash"), extract_answer("<answer> 7 </answer>", "answer_tag")
    ('72', '7')
    >>> extract_answer("The answer is 7.", "last"), extract_answer("no tag", "answer_tag") is None
    ('7', True)
    """
    if how == "whole":
        return text
    if how == "hash":
        if "####" not in text:
            return None
        return text.rsplit("####", 1)[1].strip().split("\n", 1)[0].strip()
    if how == "boxed":
        found = extract_boxed(text)
        return None if found is None else found.strip()
    if how == "answer_tag":
        tags = _ANSWER_TAG_RE.findall(text)
        return tags[-1].strip() if tags else None
    if how in ("first", "last"):
        words = [w.strip(_WORD_STRIP) for w in text.split()]
        words = [w for w in words if w]
        return (words[0] if how == "first" else words[-1]) if words else None
    raise ValueError(f"extract must be one of {', '.join(EXTRACTS)}, got {how!r}")


# ---------------------------------------------------------------- numeric

# Optional sign (ASCII or U+2212 minus), then digits with optional thousands commas ("1,234" but not
# "1,2345"), optional decimals or a bare ".5", optional exponent. Not preceded by a digit or a dot, so a
# match never starts in the middle of a longer number.
_NUMBER_RE = re.compile(
    r"(?<![0-9.])([-+\u2212]?)"
    r"((?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.[0-9]+)?|\.[0-9]+)"
    r"(?:[eE]([-+]?[0-9]+))?"
)


def parse_number(text: str, which: str = "first") -> Decimal | None:
    """The first (or, with which="last", the last) number in `text` (thousands commas allowed), or None.

    >>> parse_number("The answer is -1,234.5 apples")
    Decimal('-1234.5')
    >>> parse_number("3+4=7. The answer is 7 (not 8).", "last")
    Decimal('8')
    >>> parse_number("no digits here") is None
    True
    """
    if which == "last":
        m = None
        for m in _NUMBER_RE.finditer(text):
            pass
    else:
        m = _NUMBER_RE.search(text)
    if m is None:
        return None
    sign, body, exponent = m.groups()
    literal = ("-" if sign in ("-", "\u2212") else "") + body.replace(",", "")
    return Decimal(literal + (f"e{exponent}" if exponent else ""))


def score_numeric(completion: str, sample: Sample, tolerance: float = 1e-6, extract: str = "last") -> float:
    """1.0 when the completion's number (`extract`: its last by default) is within `tolerance` of the answer's.

    >>> score_numeric("It is 1,024.", Sample("2**10=", "1024"))
    1.0
    >>> score_numeric("3 apples plus 4 is 3+4=7. The answer is 7.", Sample("3+4?", "7"))
    1.0
    >>> score_numeric("0.33", Sample("1/3 to 2 places?", "0.333"), tolerance=0.01)
    1.0
    >>> score_numeric("unsure", Sample("2**10=", "1024"))
    0.0
    """
    if extract == "first":
        pred = parse_number(completion)
    else:
        span = completion if extract == "last" else extract_answer(completion, extract)
        pred = None if span is None else parse_number(span, "last")
    gold = parse_number(sample.answer, "last")
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


def _check_extract(extract: str | None) -> None:
    if extract is not None and extract not in EXTRACTS:
        raise ValueError(f"extract must be one of {', '.join(EXTRACTS)}, got {extract!r}")


def make_exact(*, extract: str | None = None, **_options: Any) -> Verifier:
    """The `exact` verifier; `extract` (default `whole`: the whole completion) reads the answer part."""
    _check_extract(extract)
    if extract in (None, "whole"):
        return score_exact
    return functools.partial(score_exact, extract=extract)


def make_numeric(*, tolerance: float = 1e-6, extract: str | None = None, **_options: Any) -> Verifier:
    """The `numeric` verifier with an absolute `tolerance`; `extract` picks the number (default `last`)."""
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    _check_extract(extract)
    # A partial of a module-level function, so the verifier pickles into worker processes.
    return functools.partial(score_numeric, tolerance=float(tolerance), extract=extract or "last")


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

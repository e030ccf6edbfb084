"""A domain read from a JSON-lines file: one `{"prompt": ..., "answer": ...}` object a line.

Blank lines are skipped. The answer may be a string or a number (kept as its text). Records are split by
seed into eval (`eval_fraction` of the distinct prompts, at least one) and train (the rest, at least
one); records that share a prompt always land on the same side. Any problem raises `DomainError` with
one line naming the file, the line number and the field, e.g. `data/mine.jsonl:7: missing field 'answer'`.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from contract.spec import JsonlDomain
from trainer.domains.base import Domain, DomainError, Sample
from trainer.domains.plugins import build_verifier
from trainer.domains.records import with_record_images


def load_jsonl(spec: JsonlDomain, seed: int) -> Domain:
    """The domain in `spec.path`, split by `seed`, scored by the verifier `spec.verifier` names."""
    verifier = build_verifier(spec, default_source=f"jsonl:{spec.path}")  # a plugin that cannot load fails first
    samples = read_samples(spec)
    train, eval_ = split_by_prompt(samples, spec.eval_fraction, seed, spec.path)
    return Domain(key=f"jsonl:{spec.path}", train=train, eval=eval_, verifier=verifier,
                  format_reward=spec.format_reward)


def read_text(p: Path, path: str) -> str:
    """A data file's text (UTF-8, a byte-order mark tolerated); DomainError naming `path` when unreadable."""
    try:
        return p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DomainError(f"{path}: file not found") from None
    except UnicodeDecodeError as err:
        raise DomainError(f"{path}: not UTF-8 text (bad byte at offset {err.start})") from None
    except OSError as err:
        raise DomainError(f"{path}: cannot read ({err.strerror or err})") from None


def read_samples(spec: JsonlDomain) -> list[Sample]:
    """Every record of the file as a Sample, in file order; raises DomainError on the first bad line."""
    path = spec.path
    text = read_text(Path(path), path)
    samples = []
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and friends, which are not line ends here.
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            sample = _parse_record(line, f"{path}:{number}", spec)
            samples.append(with_record_images(sample, sample.row, spec, f"{path}:{number}", Path(path).parent))
    if not samples:
        raise DomainError(f"{path}: no records")
    return samples


def _parse_record(line: str, where: str, spec: JsonlDomain) -> Sample:
    """One line as a Sample; `where` is `path:line` for the error message."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DomainError(f"{where}: not valid JSON ({err.msg})") from None
    except (ValueError, RecursionError) as err:  # an integer too long to convert, nesting too deep
        raise DomainError(f"{where}: not valid JSON ({type(err).__name__})") from None
    if not isinstance(record, dict):
        raise DomainError(f"{where}: expected a JSON object, got {_json_type(record)}")
    pf, af = spec.prompt_field, spec.answer_field
    if pf not in record:
        raise DomainError(f"{where}: missing field '{pf}'")
    if af not in record:
        raise DomainError(f"{where}: missing field '{af}'")
    prompt, answer = record[pf], record[af]
    if not isinstance(prompt, str) or not prompt.strip():
        raise DomainError(f"{where}: field '{pf}' must be a non-empty string, got {_json_type(prompt)}")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool) and math.isfinite(answer):
        answer = str(answer)
    if not isinstance(answer, str) or not answer.strip():
        raise DomainError(f"{where}: field '{af}' must be a non-empty string or a finite number,"
                          f" got {_json_type(answer)}")
    return Sample(prompt=prompt, answer=answer, row=record)


def _json_type(value: object) -> str:
    """How a JSON value reads in an error message."""
    if isinstance(value, str):
        return "an empty string" if not value.strip() else "a string"
    names = {bool: "a boolean", int: "a number", float: "a number", list: "an array", dict: "an object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def split_by_prompt(samples: list[Sample], eval_fraction: float, seed: int,
                    path: str) -> tuple[tuple[Sample, ...], tuple[Sample, ...]]:
    """(train, eval), chosen by `seed` over distinct prompts so that no prompt is in both; file order kept."""
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.pool_key, []).append(s)
    if len(groups) < 2:
        raise DomainError(f"{path}: needs at least 2 records with different prompts (one for train, one"
                          f" for eval); found {len(samples)} record(s), {len(groups)} distinct prompt(s)")
    n_eval = min(len(groups) - 1, max(1, round(eval_fraction * len(groups))))
    order = list(groups)
    random.Random(seed).shuffle(order)
    held_out = set(order[:n_eval])
    train = tuple(s for p, group in groups.items() if p not in held_out for s in group)
    eval_ = tuple(s for p, group in groups.items() if p in held_out for s in group)
    return train, eval_

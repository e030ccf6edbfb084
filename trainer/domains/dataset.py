"""`type: dataset` domains: data as verl, TRL and OpenRLHF ship it (docs/data.md).

Where the rows come from (`path`, or `hub`):
- a `.parquet` file (pyarrow), a `.jsonl` file (one object a line) or a `.json` file (an array of objects,
  or JSON lines);
- a folder of `<split>.parquet` / `<split>.jsonl` / `<split>.json` files (verl's `train.parquet` +
  `test.parquet`), or a `datasets.save_to_disk` folder (a DatasetDict: its `split`; a Dataset: itself);
- a hub dataset id (`hub:`), loaded with `datasets.load_dataset` where the machine can download.

Each row gives a prompt (`prompt_key`: text, or chat messages `[{role, content}, ...]`) and an answer
(`answer_key`); keys with dots reach nested fields (`reward_model.ground_truth`). `sources` keeps the rows
whose `source_key` is one of them, so one mixed file feeds several experts. A `system_prompt` replaces the
rows' own system message. Eval comes from another file (`eval.path`), another split (`eval.split`) or a
seeded share of the distinct prompts (`eval.fraction`). Every problem raises `DomainError`, one line
naming the file, the row and the key.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from contract.spec import DatasetDomain
from trainer.domains.base import Domain, DomainError, Sample
from trainer.domains.jsonl import read_text, split_by_prompt
from trainer.domains.records import with_record_images
from trainer.domains.plugins import build_verifier, dotted

FILE_SUFFIXES = (".parquet", ".jsonl", ".json")


def domain_key(spec: DatasetDomain) -> str:
    """`dataset:<path or hub id>`, with `[source,...]` when the rows are filtered by source."""
    where = spec.path if spec.path is not None else f"hub:{spec.hub}"
    return f"dataset:{where}" + (f"[{','.join(spec.sources)}]" if spec.sources else "")


def load_dataset_domain(spec: DatasetDomain, seed: int) -> Domain:
    """The domain `spec` describes, split by `seed` when eval is a fraction."""
    key = domain_key(spec)
    verifier = build_verifier(spec, default_source=key)  # a plugin that cannot be imported fails first
    train = samples_of(spec, spec.path, spec.split, "path")
    ev = spec.eval
    if ev.fraction is not None:
        train, eval_ = split_by_prompt(train, ev.fraction, seed, _label(spec, spec.path, spec.split))
    else:
        where, split = (ev.path, spec.split) if ev.path is not None else (spec.path, ev.split)
        eval_ = tuple(samples_of(spec, where, split, "eval.path" if ev.path is not None else "eval.split"))
        train = tuple(train)
    return Domain(key=key, train=train, eval=eval_, verifier=verifier, format_reward=spec.format_reward)


def _label(spec: DatasetDomain, path: str | None, split: str) -> str:
    """How a file or split reads in an error message."""
    if path is None:
        return f"hub:{spec.hub}[{split}]"
    p = Path(path)
    return path if p.suffix in FILE_SUFFIXES or not p.is_dir() else f"{path}[{split}]"


def samples_of(spec: DatasetDomain, path: str | None, split: str, field: str) -> list[Sample]:
    """The rows of one file / split as Samples: source-filtered, mapped, at most max_rows."""
    label = _label(spec, path, split)
    rows = read_rows(spec, path, split, field)
    if spec.source_key is not None:
        rows = _by_source(rows, spec, label)
    if spec.max_rows is not None:
        rows = rows[: spec.max_rows]
    if not rows:
        raise DomainError(f"{label}: no rows")
    base = Path(path) if path is not None and Path(path).is_dir() else Path(path or ".").parent
    return [with_record_images(_sample(row, i, spec, label), row, spec, f"{label}: row {i}", base) for i, row in rows]


def read_rows(spec: DatasetDomain, path: str | None, split: str, field: str) -> list[tuple[int, dict]]:
    """(row number, row) of a file, folder split, save_to_disk folder or hub split (numbers from 1)."""
    if path is None:
        return list(enumerate(_hub_rows(spec.hub, split), start=1))
    p = Path(path)
    if p.is_dir():
        rows = _folder_rows(p, split, path)
    elif p.suffix == ".parquet":
        rows = _parquet_rows(p, path)
    elif p.suffix in (".jsonl", ".json"):
        rows = _json_rows(p, path)
    elif not p.exists():
        raise DomainError(f"{path}: file not found" + (f" ({field})" if field != "path" else ""))
    else:
        raise DomainError(f"{path}: not a .parquet, .jsonl or .json file, nor a dataset folder")
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DomainError(f"{path}: row {i}: expected an object, got {type(row).__name__}")
    return list(enumerate(rows, start=1))


def _folder_rows(p: Path, split: str, path: str) -> list[Any]:
    if (p / "dataset_dict.json").exists() or (p / "state.json").exists():
        return _disk_rows(p, split, path)
    for suffix in FILE_SUFFIXES:
        f = p / f"{split}{suffix}"
        if f.exists():
            return _parquet_rows(f, str(f)) if suffix == ".parquet" else _json_rows(f, str(f))
    found = sorted(x.name for x in p.iterdir() if x.suffix in FILE_SUFFIXES) if p.exists() else []
    raise DomainError(f"{path}: no {split}.parquet, {split}.jsonl or {split}.json in the folder, and not a "
                      f"datasets.save_to_disk folder" + (f" (found: {', '.join(found[:8])})" if found else ""))


def _parquet_rows(p: Path, path: str) -> list[Any]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(p).to_pylist()
    except FileNotFoundError:
        raise DomainError(f"{path}: file not found") from None
    except OSError as err:
        raise DomainError(f"{path}: cannot read ({err.strerror or err})") from None
    except Exception as err:  # pyarrow.ArrowInvalid and friends: not a parquet file
        raise DomainError(f"{path}: not a readable parquet file ({type(err).__name__}: {err})") from None


def _json_rows(p: Path, path: str) -> list[Any]:
    text = read_text(p, path)
    if p.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except (ValueError, RecursionError) as err:
            raise DomainError(f"{path}: not valid JSON ({getattr(err, 'msg', type(err).__name__)})") from None
        return rows
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except (ValueError, RecursionError) as err:
                raise DomainError(f"{path}:{number}: not valid JSON ({getattr(err, 'msg', type(err).__name__)})") from None
    return rows


def _disk_rows(p: Path, split: str, path: str) -> list[Any]:
    try:
        import datasets
    except ImportError:
        raise DomainError(f"{path}: a save_to_disk folder needs the `datasets` package (pip install datasets)") from None
    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as err:
        raise DomainError(f"{path}: cannot load the dataset folder ({type(err).__name__}: {err})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DomainError(f"{path}: no split {split!r} (splits: {', '.join(ds)})")
        ds = ds[split]
    elif split != "train":
        raise DomainError(f"{path}: a single dataset (not a DatasetDict) has no split {split!r}")
    return ds.to_list()


def _hub_rows(hub: str, split: str) -> list[Any]:
    try:
        import datasets
    except ImportError:
        raise DomainError(f"hub:{hub}: needs the `datasets` package (pip install datasets)") from None
    try:
        return datasets.load_dataset(hub, split=split).to_list()
    except Exception as err:
        first = (str(err).splitlines() or [""])[0][:300]
        raise DomainError(f"hub:{hub}[{split}]: cannot load ({type(err).__name__}: {first})") from None


def _by_source(rows: list[tuple[int, dict]], spec: DatasetDomain, label: str) -> list[tuple[int, dict]]:
    """The rows whose source is one of `spec.sources` (all rows without sources); unknown sources refused."""
    key = spec.source_key
    seen: dict[str, int] = {}
    out = []
    for i, row in rows:
        try:
            src = dotted(row, key)
        except KeyError:
            raise DomainError(f"{label}: row {i}: missing key {key!r} (source_key; keys: {_keys(row)})") from None
        src = str(src)
        seen[src] = seen.get(src, 0) + 1
        if spec.sources is None or src in spec.sources:
            out.append((i, row))
    missing = [s for s in spec.sources or [] if s not in seen]
    if missing:
        raise DomainError(f"{label}: unknown source {', '.join(map(repr, missing))}: no row has {key} = "
                          f"{missing[0]!r} (its sources: {', '.join(sorted(seen)[:12])})")
    return out


def _keys(row: dict) -> str:
    return ", ".join(map(str, list(row)[:12])) or "none"


def _text_of(content: Any) -> str | None:
    """A message's text: a string, or the text parts of a list of {type: text, text: ...}."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [c.get("text") for c in content if isinstance(c, dict) and isinstance(c.get("text"), str)]
        return "".join(parts) if parts else None
    return None


def _sample(row: dict, i: int, spec: DatasetDomain, label: str) -> Sample:
    """One row as a Sample (text or chat prompt, the system prompt applied, the answer as text)."""
    where = f"{label}: row {i}"
    try:
        prompt = dotted(row, spec.prompt_key)
    except KeyError:
        raise DomainError(f"{where}: missing key {spec.prompt_key!r} (prompt_key; keys: {_keys(row)})") from None
    try:
        answer = dotted(row, spec.answer_key)
    except KeyError:
        raise DomainError(f"{where}: missing key {spec.answer_key!r} (answer_key; keys: {_keys(row)})") from None
    messages: list[tuple[str, str]] | None
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DomainError(f"{where}: {spec.prompt_key!r} is an empty string")
        messages = None if spec.system_prompt is None else [("user", prompt)]
    elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        messages = []
        for j, m in enumerate(prompt):
            text = _text_of(m.get("content"))
            if not isinstance(m.get("role"), str) or text is None:
                raise DomainError(f"{where}: {spec.prompt_key}[{j}] must be a message {{role, content}} with text")
            messages.append((m["role"], text))
    else:
        raise DomainError(f"{where}: {spec.prompt_key!r} must be text or a list of chat messages, "
                          f"got {type(prompt).__name__}")
    if messages is not None and spec.system_prompt is not None:
        messages = [("system", spec.system_prompt)] + [m for m in messages if m[0] != "system"]
    text = _answer_text(answer)
    if text is None:
        raise DomainError(f"{where}: {spec.answer_key!r} must be text or a number, got "
                          f"{'null' if answer is None else type(answer).__name__}")
    if messages is None:
        return Sample(prompt=prompt, answer=text, row=row)
    plain = "\n".join(c for _, c in messages)
    return Sample(prompt=plain, answer=text, messages=tuple(messages), row=row)


def _answer_text(answer: Any) -> str | None:
    """The reference answer as text: strings as they are, finite numbers as their text, lists of those as JSON."""
    if isinstance(answer, bool):
        return str(answer)
    if isinstance(answer, str):
        return answer if answer.strip() else None
    if isinstance(answer, (int, float)):
        return str(answer) if math.isfinite(answer) else None
    if isinstance(answer, (list, tuple)) and answer and all(isinstance(a, (str, int, float)) for a in answer):
        return json.dumps(list(answer), ensure_ascii=False)
    return None

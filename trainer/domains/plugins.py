"""Reward plugins: a function of your own, `path/to/file.py:name` or `package.module:name`, as a verifier.

Two calling conventions, told apart by the function's parameters:

- verl: `compute_score(data_source, solution_str, ground_truth, extra_info=None)`: has a `solution_str`
  parameter. Called once per completion with the row's source (`source_key`, else its `data_source` column,
  else the domain key), the completion, the raw ground truth (`answer_key`'s value, not stringified) and the
  row's `extra_info` column (or {}).
- TRL: `reward(completions, **kwargs)` (or `(prompts, completions, ...)`): has a `completions` parameter.
  Called once per completion with one-element lists: `completions=[text]` (`[[{"role": "assistant",
  "content": text}]]` for a chat prompt), `prompts=[prompt]` and every other column of the row as
  `column=[value]`; only the parameters the function takes are passed unless it has `**kwargs`.

The function returns a number (a bool counts), a dict with `score` (its other numeric keys become metrics
`reward/<key>`), or (TRL) a one-element list of either; None scores 0. An exception, or a result that is
none of these, scores 0 for that completion, counts in `reward/plugin_errors`, and keeps the first
traceback (`first_error`) for the unit to report as an event; it never stops the unit.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import numbers
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Callable

from trainer.domains.base import DomainError, Sample

PLUGIN_ERRORS = "plugin_errors"   # the reward part (metric reward/plugin_errors) counting failed calls
_RESERVED_PARTS = {"mean", PLUGIN_ERRORS}


def load_function(ref: str, field: str = "verifier.function") -> Callable[..., Any]:
    """The function `ref` names (`file.py:name` or `module:name`); DomainError (one line) when it cannot be had."""
    where, _, name = ref.strip().rpartition(":")
    where, name = where.strip(), name.strip()
    if not where or not name:
        raise DomainError(f"{field}: {ref!r} must be 'path/to/file.py:name' or 'package.module:name'")
    try:
        if where.endswith(".py") or "/" in where or "\\" in where:
            path = Path(where).expanduser().resolve()
            if not path.is_file():
                raise DomainError(f"{field}: plugin file {where} not found")
            mod_name = "copd_plugin_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise DomainError(f"{field}: cannot import {where} (not a Python file)")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module  # so dataclasses / pickling inside the plugin find their module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(mod_name, None)
                raise
        else:
            module = importlib.import_module(where)
    except DomainError:
        raise
    except (Exception, SystemExit) as err:
        raise DomainError(f"{field}: cannot import {where} ({type(err).__name__}: {err})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise DomainError(f"{field}: {where} has no function {name!r}")
    return fn


def convention(fn: Callable[..., Any], field: str = "verifier.function") -> str:
    """'verl' or 'trl', by the function's parameters; DomainError when neither fits."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        raise DomainError(f"{field}: cannot read the signature of {getattr(fn, '__name__', fn)!r}") from None
    if "solution_str" in params:
        return "verl"
    if "completions" in params:
        return "trl"
    raise DomainError(f"{field}: {getattr(fn, '__name__', 'the function')}({', '.join(params)}) takes neither "
                      "verl's solution_str nor TRL's completions")


def dotted(row: Any, key: str) -> Any:
    """`row[key]`, where dots reach into nested mappings (`reward_model.ground_truth`); a key that itself holds
    dots wins. KeyError when absent."""
    if isinstance(row, dict) and key in row:
        return row[key]
    cur = row
    for part in key.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            raise KeyError(key)
    return cur


class RewardPlugin:
    """A verifier that calls a user's reward function (see the module docstring); pickles by its reference."""

    def __init__(self, ref: str, *, answer_key: str = "answer", source_key: str | None = None,
                 default_source: str = "", prompt_key: str = "prompt", field: str = "verifier.function") -> None:
        self.ref, self.answer_key, self.source_key = ref, answer_key, source_key
        self.default_source, self.prompt_key, self.field = default_source, prompt_key, field
        self.fn = load_function(ref, field)
        self.kind = convention(self.fn, field)
        params = inspect.signature(self.fn).parameters
        self._names = set(params)
        self._var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        self._lock = threading.Lock()
        self.errors = 0
        self.first_error: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in ("ref", "answer_key", "source_key", "default_source", "prompt_key", "field")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state.pop("ref"), **state)

    def __call__(self, completion: str, sample: Sample) -> float:
        return self.detailed(completion, sample)[0]

    def detailed(self, completion: str, sample: Sample) -> tuple[float, dict[str, float]]:
        """(score, parts) of one completion; a failing call scores 0 with parts {plugin_errors: 1}."""
        try:
            return _read_result(self._call(completion, sample))
        except Exception as err:  # the plugin's own bug: this sample scores 0, the unit goes on
            with self._lock:
                self.errors += 1
                if self.first_error is None:
                    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__)[-6:])
                    self.first_error = f"reward plugin {self.ref} raised on a sample (scored 0):\n{tb}"
            return 0.0, {PLUGIN_ERRORS: 1.0}

    def _call(self, completion: str, sample: Sample) -> Any:
        row = dict(sample.row or {})
        if self.kind == "verl":
            try:
                truth = dotted(row, self.answer_key)
            except KeyError:
                truth = sample.answer
            source = row.get("data_source", self.default_source)
            if self.source_key is not None:
                try:
                    source = dotted(row, self.source_key)
                except KeyError:
                    pass
            kwargs = {"data_source": source, "solution_str": completion, "ground_truth": truth,
                      "extra_info": row.get("extra_info") or {}}
            return self.fn(**self._accepted(kwargs))
        chat = sample.messages is not None
        kwargs = {k: [v] for k, v in row.items() if k not in ("prompt", "completion", "prompts", "completions")}
        kwargs["completions"] = [[{"role": "assistant", "content": completion}] if chat else completion]
        kwargs["prompts"] = [sample.model_input]
        kwargs.setdefault("ground_truth", [sample.answer])
        out = self.fn(**self._accepted(kwargs))
        if isinstance(out, (list, tuple)):
            if len(out) != 1:
                raise ValueError(f"returned {len(out)} rewards for 1 completion")
            out = out[0]
        return out

    def _accepted(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return kwargs if self._var_kw else {k: v for k, v in kwargs.items() if k in self._names}


def _read_result(out: Any) -> tuple[float, dict[str, float]]:
    """(score, parts) of a plugin's return value; ValueError when it is neither a number nor a dict with score."""
    if out is None:
        return 0.0, {}
    parts: dict[str, float] = {}
    if isinstance(out, dict):
        if "score" not in out:
            raise ValueError(f"returned a dict without 'score' (keys: {', '.join(map(str, out))})")
        for k, v in out.items():
            if k == "score" or not isinstance(v, numbers.Real):
                continue
            name = str(k).replace("/", "_")
            if name and name not in _RESERVED_PARTS and math.isfinite(float(v)):
                parts[name] = float(v)
        out = out["score"]
    if isinstance(out, bool):
        out = float(out)
    if not isinstance(out, numbers.Real) or not math.isfinite(float(out)):
        raise ValueError(f"returned {type(out).__name__} {out!r:.60}, not a finite number")
    return float(out), parts


def build_verifier(domain: Any, default_source: str) -> Callable[[str, Sample], float]:
    """The verifier a jsonl / dataset domain spec names: a builtin verifier with its options, or a RewardPlugin."""
    from contract.spec import PluginVerifier
    from trainer.domains.verifiers import VERIFIERS

    v = domain.verifier
    if isinstance(v, PluginVerifier):
        return RewardPlugin(v.function, answer_key=getattr(domain, "answer_key", getattr(domain, "answer_field", "answer")),
                            source_key=getattr(domain, "source_key", None), default_source=default_source,
                            prompt_key=getattr(domain, "prompt_key", getattr(domain, "prompt_field", "prompt")))
    try:
        return VERIFIERS[v](tolerance=domain.tolerance, extract=domain.extract)
    except ValueError as err:
        raise DomainError(f"verifier: {err}") from None

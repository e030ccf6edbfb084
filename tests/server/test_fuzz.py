"""Bad input never gives a 500: hypothesis throws malformed specs, metric batches and queries at the API."""

from __future__ import annotations

import copy
import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server.conftest import SPEC, Api

# COPD_FUZZ_EXAMPLES=2000 for a longer, randomised hunt by hand; the default run is short and repeatable.
_EXAMPLES = int(os.environ.get("COPD_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_EXAMPLES or 60, deadline=None, derandomize=not _EXAMPLES,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

nasty_text = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", "\x00", "a\x00b", "\ud800", "../../etc/passwd", "builtin:x", "hub:", "C:\\x", " ", "é" * 70,
                     "x" * 5000, "NaN", "-1", "1e999"]),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), nasty_text,
)


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


url_text = nasty_text.filter(_encodable)  # a URL cannot even carry a lone surrogate
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(nasty_text, inner, max_size=4)), max_leaves=12)


def _mutate(doc: Any, path: list[Any], value: Any) -> Any:
    """`doc` with the value at `path` (as far as it exists) replaced."""
    doc = copy.deepcopy(doc)
    node = doc
    for i, key in enumerate(path):
        if isinstance(node, dict) and node:
            k = list(node)[key % len(node)] if isinstance(key, int) else key
        elif isinstance(node, list) and node:
            k = key % len(node) if isinstance(key, int) else 0
        else:
            return value if i == 0 else doc
        if i == len(path) - 1 or not isinstance(node.get(k) if isinstance(node, dict) else node[k], (dict, list)):
            node[k] = value
            return doc
        node = node[k]
    return doc


def _send(api: Api, method: str, url: str, body: Any = None, raw: bytes | None = None) -> None:
    if raw is None:
        raw = json.dumps(body, allow_nan=True).encode()
    r = api.client.request(method, url, content=raw, headers={"content-type": "application/json"})
    assert r.status_code < 500, (url, raw[:300], r.text[:300])
    if r.status_code >= 400:
        detail = r.json()["detail"]
        assert isinstance(detail, str) and detail and "\n" not in detail


@FUZZ
@given(path=st.lists(st.one_of(st.integers(0, 20), nasty_text), min_size=1, max_size=4), value=json_values)
def test_fuzz_create_run(server: Api, path: list[Any], value: Any) -> None:
    _send(server, "POST", "/api/v1/runs", _mutate(SPEC, path, value))


@FUZZ
@given(body=json_values)
def test_fuzz_create_run_any_json(server: Api, body: Any) -> None:
    _send(server, "POST", "/api/v1/runs", body)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_fuzz_raw_bytes(server: Api, raw: bytes) -> None:
    _send(server, "POST", "/api/v1/runs", raw=raw)
    _send(server, "POST", "/api/v1/runs/1/metrics", raw=raw)


@FUZZ
@given(points=st.lists(st.fixed_dictionaries(
    {"expert": st.one_of(st.sampled_from(["text", "merged", None, "audio", "../x"]), nasty_text),
     "key": st.one_of(st.sampled_from(["loss/grpo", "acc/text", "a//b", "/x", ".."]), nasty_text),
     "step": st.one_of(st.integers(min_value=-5, max_value=2**65), scalars),
     "value": scalars},
    optional={"wall_time": scalars, "extra": scalars}), max_size=5))
def test_fuzz_metrics(server: Api, points: list[dict]) -> None:
    run_id = _fuzz_run(server)
    _send(server, "POST", f"/api/v1/runs/{run_id}/metrics", {"points": points})


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(["beta", "rl_steps", "opd_steps", "teacher_weights", "lr", "x"]),
                               json_values, max_size=3),
       version=st.one_of(st.integers(-2, 3), scalars))
def test_fuzz_knobs(server: Api, changes: dict, version: Any) -> None:
    run_id = _fuzz_run(server)
    _send(server, "PATCH", f"/api/v1/runs/{run_id}/knobs", {"expected_version": version, "changes": changes})


@FUZZ
@given(params=st.dictionaries(st.sampled_from(["key", "expert", "max_points", "status", "limit", "offset",
                                               "after_id", "level", "final"]),
                              st.one_of(url_text, st.integers(-(2**70), 2**70).map(str)), max_size=4),
       run_part=st.one_of(st.integers(-(2**70), 2**70).map(str), url_text.filter(lambda s: "/" not in s and s)))
def test_fuzz_queries_and_ids(server: Api, params: dict, run_part: str) -> None:
    from urllib.parse import quote

    for url in ("/api/v1/runs", f"/api/v1/runs/{quote(run_part, safe='')}",
                f"/api/v1/runs/{quote(run_part, safe='')}/metrics", f"/api/v1/runs/{quote(run_part, safe='')}/events",
                f"/api/v1/runs/{quote(run_part, safe='')}/checkpoints"):
        r = server.client.get(url, params=params)
        assert r.status_code < 500, (url, params, r.text[:300])


_RUNS: dict[str, int] = {}


def _fuzz_run(server: Api) -> int:
    """One run per backend shared by the fuzz examples (the module app keeps its tables)."""
    if server.backend not in _RUNS or server.client.get(f"/api/v1/runs/{_RUNS[server.backend]}").status_code != 200:
        _RUNS[server.backend] = server.create_run(name="fuzz")["id"]
    return _RUNS[server.backend]

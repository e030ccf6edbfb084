"""COPD_DATA_ROOTS: the settings' roots, and a worker refusing a spec whose files lie outside them."""

from __future__ import annotations

import os

import pytest

from contract.settings import START_CWD, Settings, get_settings
from contract.spec import SpecError, parse_spec


def test_default_roots_are_the_data_dir_and_the_start_cwd(tmp_path):
    assert Settings(data_dir=tmp_path).allowed_data_roots == [tmp_path.resolve(), START_CWD.resolve()]
    roots = Settings(data_dir=tmp_path, data_roots=os.pathsep.join([str(tmp_path / "a"), "", str(tmp_path / "b")]))
    assert roots.allowed_data_roots == [(tmp_path / "a").resolve(), (tmp_path / "b").resolve()]


def test_worker_refuses_a_spec_outside_the_roots_before_reading_it(tmp_path, monkeypatch):
    from worker.runs import context_for

    monkeypatch.setenv("COPD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COPD_DATA_ROOTS", str(tmp_path / "allowed"))
    get_settings.cache_clear()
    try:
        outside = tmp_path / "secret.jsonl"
        outside.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": "2"}\n')
        spec = parse_spec({"name": "x", "experts": [{"name": "a", "domain": {"type": "jsonl", "path": str(outside)}},
                                                    {"name": "b", "domain": "builtin:grid"}]})
        with pytest.raises(SpecError, match=r"^experts\.0\.domain\.path: .* is outside the allowed data roots"):
            context_for(1, spec)
        assert not (tmp_path / "data").exists()  # nothing built, nothing written
    finally:
        get_settings.cache_clear()

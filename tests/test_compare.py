"""`copd compare`: suite files, and a 1-seed, 1-cycle smoke of every strategy and of the report writer."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from copd.compare import compare, deep_merge, entry_spec, load_suite
from trainer.spec import SpecError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "suites" / "smoke.yaml"


def test_deep_merge_keeps_the_base():
    base = {"grpo": {"lr": 1.0, "group_size": 8}, "experts": [1, 2]}
    assert deep_merge(base, {"grpo": {"lr": 2.0}, "experts": [3]}) == {"grpo": {"lr": 2.0, "group_size": 8}, "experts": [3]}
    assert base["grpo"]["lr"] == 1.0


@pytest.mark.parametrize("path", sorted((ROOT / "suites").glob("*.yaml")), ids=lambda p: p.name)
def test_every_builtin_suite_parses(path):
    suite, base = load_suite(path)
    for e in suite.entries:
        spec = entry_spec(suite, base, e, suite.seeds[-1])
        assert spec.strategy == e.strategy and spec.seed == suite.seeds[-1]


def test_match_tokens_is_checked(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text().replace("match_tokens: copd", "match_tokens: nope"))
    with pytest.raises(SpecError, match="entry mixed_tokens: match_tokens: 'nope' is not another entry"):
        load_suite(bad)
    bad.write_text(SMOKE.read_text().replace("{name: mopd, strategy: mopd}", "{name: mopd, strategy: mopd, match_tokens: copd}"))
    with pytest.raises(SpecError, match="entry mopd: match_tokens: only a mixed_rlvr entry"):
        load_suite(bad)


def test_suite_errors_name_the_entry_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text().replace("{name: mopd, strategy: mopd}",
                                             "{name: mopd, strategy: mopd, overrides: {distill: {teacher: nope}}}"))
    with pytest.raises(SpecError, match=r"entry mopd: distill\.teacher"):
        load_suite(bad)
    bad.write_text(SMOKE.read_text().replace("seeds: [0]", "seeds: [0]\nextra: 1"))
    with pytest.raises(SpecError, match="extra"):
        load_suite(bad)


def test_smoke_suite_every_strategy_and_report(tmp_path, model_cache):
    out = tmp_path / "cmp"
    report = compare(SMOKE, out, jobs=1, model_cache=model_cache, command="copd compare suites/smoke.yaml")
    text = report.read_text()
    for row in ("base model", "independent: expert image", "copd: expert video", "**independent_merge**",
                "**mixed_rlvr**", "**static_opd**", "**mopd**", "**copd**", "divergence cost", "top-1 agreement",
                "copd compare suites/smoke.yaml"):
        assert row in text, row
    assert "Missing" not in text
    for row in ("**copd_step** (copd)", "**mixed_tokens** (mixed_rlvr)", "after Phase I"):
        assert row in text, row
    # the token-matched mixed policy trained on copd's tokens (to within one step), the plain one on fewer
    from copd.compare import read_run
    got = {n: read_run(n, 0, out / "runs" / n / "s0") for n in ("copd", "mixed_rlvr", "mixed_tokens")}
    step_tokens = got["mixed_rlvr"].train_tokens / got["mixed_rlvr"].steps
    assert got["copd"].train_tokens <= got["mixed_tokens"].train_tokens < got["copd"].train_tokens + 1.5 * step_tokens
    assert got["mixed_rlvr"].train_tokens < got["copd"].train_tokens
    assert got["mixed_tokens"].steps > got["mixed_rlvr"].steps
    assert [x for x, _, _ in got["copd"].overlap_phases] == [0.0, 0.5, 1.0]
    for png in ("accuracy_per_cycle.png", "overlap.png", "cost_vs_accuracy.png"):
        assert (out / png).stat().st_size > 1000
    # a second call finds every run done and only rewrites the report; a cut-off run is resumed
    shutil.rmtree(out / "runs" / "mopd" / "s0" / "final")
    (out / "runs" / "mopd" / "s0" / "state.json").unlink()
    (out / "runs" / "mopd" / "s0" / "metrics.jsonl").unlink()
    compare(SMOKE, out, jobs=1, model_cache=model_cache)
    assert (out / "runs" / "mopd" / "s0" / "final" / "config.json").exists()
    # --entries: a slice of the suite, reported alone; without an `independent` entry, the divergence cost takes
    # independent_merge's experts, which are the independent experts (the same training, then a merge)
    got = {n: read_run(n, 0, out / "runs" / n / "s0") for n in ("independent", "independent_merge")}
    assert got["independent"].experts == got["independent_merge"].experts
    text = compare(SMOKE, out, model_cache=model_cache, report_only=True,
                   entries=["mixed_rlvr", "independent_merge", "copd"]).read_text()
    assert "independent_merge: expert image" in text and "`independent_merge`'s, before their merge" in text
    assert "independent: expert" not in text and "**mopd**" not in text and "Missing" not in text
    # records/: the report rewrites from them alone once runs/ is gone (a fresh clone of a results folder) ...
    from copd.compare import RunResult, record_path
    full = compare(SMOKE, out, model_cache=model_cache, report_only=True).read_text()
    assert "Training time" in full and "Provenance" in full
    clone = tmp_path / "clone"
    shutil.copytree(out, clone, ignore=shutil.ignore_patterns("runs"))
    assert compare(SMOKE, clone, model_cache=model_cache, report_only=True).read_text() == full
    # ... and a later call runs only what has no record: the token-matched run matches copd's record, and a
    # rerun reproduces its record but for the wall time
    old = RunResult.model_validate_json(record_path(clone, "mixed_tokens", 0).read_text())
    record_path(clone, "mixed_tokens", 0).unlink()
    logs = []
    compare(SMOKE, clone, jobs=1, model_cache=model_cache, entries=["copd", "mixed_tokens"], log=logs.append)
    assert "copd seed 0: recorded (records/copd/s0.json), not rerun" in logs
    assert not (clone / "runs" / "copd" / "s0").exists() and (clone / "runs" / "mixed_tokens" / "s0" / "final").exists()
    new = RunResult.model_validate_json(record_path(clone, "mixed_tokens", 0).read_text())
    assert new.model_dump(exclude={"wall_s"}) == old.model_dump(exclude={"wall_s"})


def test_entries_and_seeds_errors_are_one_line(tmp_path):
    from typer.testing import CliRunner

    from copd.compare import app

    for args, msg in ((["--entries", "copd,nope"], "error: --entries: 'nope' is not an entry of suite smoke (entries: "),
                      (["--seeds", "0,x"], "error: --seeds: 'x' is not a seed (comma-separated integers)")):
        res = CliRunner().invoke(app, [str(SMOKE), "--out", str(tmp_path / "o"), *args])
        assert res.exit_code == 2 and res.output.strip().startswith(msg), res.output
        assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "runs").exists()


def test_compare_api_unreachable_is_one_line(tmp_path, monkeypatch):
    import socket

    from typer.testing import CliRunner

    from copd.compare import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    from contract.settings import get_settings

    monkeypatch.setenv("COPD_API_TOKEN", "compare-test-token-0123456789")
    get_settings.cache_clear()  # settings read by an earlier test are cached: read this environment
    try:
        res = CliRunner().invoke(app, [str(SMOKE), "--out", str(tmp_path / "o"), "--api", dead])
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert res.exit_code == 2
    assert res.output.strip().startswith("error: --api: API not reachable at") and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "runs").exists()  # nothing started

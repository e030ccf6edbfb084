"""The dashboard's pieces without Streamlit: the HTTP client against the real API, and the pure frame / knob helpers."""

from __future__ import annotations

import math
from contextlib import closing

import pandas as pd
import pytest

from tests.ui.conftest import ApiProcess
from ui import frames
from ui.api import Api, ApiError, read_token
from ui.mixing import PER_EXPERT, SAME, beta_changes, weight_changes

# ---- the client against the real API


@pytest.fixture
def api(api_server: ApiProcess) -> Api:
    client = Api(api_server.url, api_server.token)
    yield client
    client.close()


def test_errors_are_one_readable_line(api_server: ApiProcess, api: Api, dead_url: str) -> None:
    with pytest.raises(ApiError) as e:
        api.run(99999)
    assert (e.value.status, e.value.message) == (404, "Not found (404): run_id: no run 99999")
    with pytest.raises(ApiError) as e:
        api.act(api_server.ids["cancelled-run"], "pause")
    assert e.value.status == 409 and e.value.message.startswith(
        f"Conflict (409): run {api_server.ids['cancelled-run']} is cancelled")
    with pytest.raises(ApiError) as e, closing(Api(api_server.url, "wrong-token-0123456789abcdef")) as other:
        other.runs()
    assert e.value.status == 401 and "COPD_API_TOKEN" in e.value.message
    with pytest.raises(ApiError) as e, closing(Api(api_server.url, None)) as other:
        other.runs()
    assert "no token found" in e.value.message
    with pytest.raises(ApiError) as e, closing(Api(dead_url, "x" * 20)) as other:
        other.runs()
    assert e.value.status == 0 and e.value.message.startswith(f"API not reachable at {dead_url}")  # 0: unreachable
    assert "copd api" in e.value.message


def test_422_names_fields(api: Api) -> None:
    with pytest.raises(ApiError) as e:
        api.create_run({"name": "x", "experts": [{"name": "a", "domain": "builtin:nope"}], "schedule": {"cycles": -1}})
    assert e.value.status == 422
    fields = e.value.field_errors()
    assert {"experts.0.domain", "schedule.cycles"} <= set(fields)
    # knob errors carry the field in `detail` only
    err = ApiError(422, "changes.beta.text: must be a number >= 0")
    assert err.field_errors() == {"changes.beta.text": "must be a number >= 0"}


def test_metrics_are_downsampled_by_the_api(api_server: ApiProcess, api: Api) -> None:
    big = api.metrics(api_server.ids["big-run"], key="reward/mean", expert="text", max_points=500)
    assert 2 <= len(big) <= 500
    assert big["step"].is_monotonic_increasing and big["step"].iloc[-1] == 100_000
    assert list(big.columns) == ["expert", "key", "step", "value"]
    run_level = api.metrics(api_server.ids["copd-live"], key="overlap/mean", expert="")
    assert run_level["expert"].isna().all() and list(run_level["step"]) == [1, 2, 3]  # one point a cycle


def test_token_from_the_data_folder(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from copd.settings import Settings

    monkeypatch.delenv("COPD_API_TOKEN", raising=False)
    (tmp_path / "token").write_text("from-the-file-0123456789\n")
    assert read_token(Settings(data_dir=tmp_path)) == "from-the-file-0123456789"
    assert read_token(Settings(data_dir=tmp_path, api_token="from-env-0123456789ab")) == "from-env-0123456789ab"
    assert read_token(Settings(data_dir=tmp_path / "missing")) is None


# ---- pure helpers


def points(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["expert", "key", "step", "value"])


def test_accuracy_by_cycle_counts_evaluations_and_aligns_merged_to_the_end() -> None:
    acc = points([("a", "acc/a", 0, 0.1), ("a", "acc/a", 5, 0.2), ("a", "acc/a", 10, 0.3),
                  ("b", "acc/a", 0, 0.1), ("b", "acc/a", 5, 0.15), ("b", "acc/a", 10, 0.2),
                  ("merged", "acc/a", 10, 0.35), ("a", "acc_mean", 10, 0.5)])
    out = frames.accuracy_by_cycle(acc)
    assert out[out["expert"] == "a"]["cycle"].tolist() == [0, 1, 2]
    assert out[out["expert"] == "merged"][["cycle", "accuracy"]].values.tolist() == [[2, 0.35]]
    assert set(out["domain"]) == {"a"}
    assert frames.eval_steps(out)[("b", 1)] == 5


def test_overlap_matrix_reads_each_experts_point_at_its_eval_step() -> None:
    ov = points([("a", "overlap/b", 5, 0.9), ("a", "overlap/b", 10, 0.8), ("b", "overlap/a", 10, 0.7)])
    steps = {("a", 1): 5, ("a", 2): 10, ("b", 1): 5, ("b", 2): 10}
    m = frames.overlap_matrix(ov, steps, 2, ["a", "b"])
    assert sorted(m.itertuples(index=False, name=None)) == [("a", "b", 0.8), ("b", "a", 0.7)]
    assert frames.overlap_matrix(ov, steps, 1, ["a", "b"]).values.tolist() == [["a", "b", 0.9]]


def test_phase_spans_and_gaps() -> None:
    phase = points([("a", "phase", s, 1.0 if (s - 1) % 5 < 3 else 2.0) for s in range(1, 11)])
    spans = frames.phase_spans(phase)
    assert spans.values.tolist() == [[0.5, 3.5, "Phase I (RLVR)"], [3.5, 5.5, "Phase II (OPD)"],
                                     [5.5, 8.5, "Phase I (RLVR)"], [8.5, 10.5, "Phase II (OPD)"]]
    kl = points([("a", "opd/kl", s, 0.1) for s in (4, 5, 9, 10)])
    broken = frames.break_gaps(kl)
    assert broken["step"].tolist() == [4, 5, 8, 9, 10] and math.isnan(broken["value"].iloc[2])


def test_final_accuracy_prefers_merged_then_owner_then_latest() -> None:
    acc = frames.accuracy_by_cycle(points([
        ("a", "acc/a", 0, 0.1), ("a", "acc/a", 5, 0.4), ("b", "acc/a", 5, 0.2), ("merged", "acc/a", 5, 0.5),
        ("a", "acc/b", 5, 0.3), ("b", "acc/b", 0, 0.1), ("b", "acc/b", 5, 0.35), ("mixed", "acc/c", 5, 0.6)]))
    final = frames.final_accuracy(acc, ["a", "b", "c"])
    assert final.values.tolist() == [["a", 0.5, "merged"], ["b", 0.35, "b"], ["c", 0.6, "mixed"]]


def test_beta_changes() -> None:
    each = {"a": 1.0, "b": 0.5}
    assert beta_changes(1.0, SAME, 1.0, {}, 1.0) is None
    assert beta_changes(1.0, SAME, 0.5, {}, 1.0) == 0.5
    assert beta_changes({"a": 0.5}, SAME, 1.0, {}, 1.0) == 1.0  # a number replaces the map
    assert beta_changes(1.0, PER_EXPERT, 0.0, each, 1.0) == each  # first map: sent whole
    assert beta_changes(1.0, PER_EXPERT, 0.0, {"a": 1.0, "b": 1.0}, 1.0) is None
    assert beta_changes({"a": 1.0, "b": 0.4}, PER_EXPERT, 0.0, each, 1.0) == {"b": 0.5}  # merges: only changes


def test_weight_changes() -> None:
    current = {"a": {"b": 1.0}, "b": {"a": 1.0}}
    grid = pd.DataFrame({"a": [math.nan, 1.0], "b": [0.5, math.nan]}, index=["a", "b"])
    assert weight_changes(current, grid) == {"a": {"b": 0.5}}
    grid.loc["b", "b"] = 2.0  # a blank cell filled in is sent (the API refuses self-teaching by name)
    assert weight_changes(current, grid) == {"a": {"b": 0.5}, "b": {"b": 2.0}}


def test_launch_command() -> None:
    from ui.launch import APP, command

    cmd = command(8601, "0.0.0.0")
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4] == str(APP) and APP.is_file()
    args = dict(zip(cmd[5::2], cmd[6::2]))
    assert args["--server.port"] == "8601" and args["--server.address"] == "0.0.0.0"
    assert args["--server.headless"] == "true" and args["--browser.gatherUsageStats"] == "false"


def test_the_dashboard_imports_no_server_worker_trainer_or_torch() -> None:
    import subprocess
    import sys

    code = ("import sys; import ui.api, ui.common, ui.mixing, ui.charts, ui.frames, ui.launch; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'server', 'worker', 'trainer', "
            "'sqlalchemy', 'celery'}); print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == ""


def test_a_per_expert_beta_is_shown_for_every_expert() -> None:
    from ui.mixing import shown_values

    assert shown_values({"beta": {"text": 0.5}, "lr": 1e-3}, ["text", "image"], 1.0) == \
        {"beta": {"text": 0.5, "image": 1.0}, "lr": 1e-3}
    assert shown_values({"beta": 0.7}, ["text", "image"], 1.0) == {"beta": 0.7}

"""Runs page (AppTest against the real API): the table, filters, opening a run, readable errors."""

from __future__ import annotations

import pytest

from tests.ui.conftest import ApiProcess, button, no_traceback, open_page, shown

STATES = {"draft", "queued", "running", "paused", "completed", "failed", "cancelled"}


def table(at):
    return at.dataframe[0].value


def test_lists_runs_in_every_state(ui_env: ApiProcess) -> None:
    at = open_page()
    no_traceback(at)
    assert at.title[0].value == "Runs"
    df = table(at)
    assert set(ui_env.ids) <= set(df["name"])
    assert STATES <= set(df["status"])
    done = df.set_index("name").loc["copd-done"]
    assert done["cycle"] == "2 / 2" and done["strategy"] == "copd"
    with ui_env.http() as http:
        params = {"key": "acc_mean", "expert": "merged"}
        acc = http.get(f"/runs/{ui_env.ids['copd-done']}/metrics", params=params).json()
    assert done["merged acc (mean)"] == pytest.approx(acc["series"][0]["points"][-1]["value"])
    assert done["open"] == f"/run?run={ui_env.ids['copd-done']}"
    assert df.set_index("name").loc["draft-run"]["started"] == "—"
    assert not at.error


def test_filters(ui_env: ApiProcess) -> None:
    at = open_page()
    at.multiselect(key="runs_status").set_value(["completed"]).run()
    assert set(table(at)["status"]) == {"completed"}
    at.multiselect(key="runs_status").set_value([]).run()
    at.text_input(key="runs_name").input("indep").run()
    assert set(table(at)["name"]) == {"indep-done", "indep-merge-done"}
    at.multiselect(key="runs_strategy").set_value(["independent_merge"]).run()
    assert list(table(at)["name"]) == ["indep-merge-done"]
    at.text_input(key="runs_name").input("no-such-run").run()
    assert "No runs match" in shown(at, "info")
    no_traceback(at)


def test_open_a_run_by_id(ui_env: ApiProcess) -> None:
    at = open_page()
    at.number_input(key="runs_open_id").set_value(ui_env.ids["copd-live"]).run()
    button(at, "Open run").click().run()
    no_traceback(at)
    assert at.title[0].value == "copd-live"
    assert at.query_params["run"] == str(ui_env.ids["copd-live"])


def test_bad_token_is_a_readable_401(ui_env: ApiProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPD_API_TOKEN", "not-the-right-token-0123456789")
    at = open_page()
    no_traceback(at)
    msg = shown(at, "error")
    assert "Not authorized (401)" in msg and "COPD_API_TOKEN" in msg


def test_api_down_is_a_readable_message(ui_env: ApiProcess, dead_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPD_API_URL", dead_url)
    at = open_page()
    no_traceback(at)
    assert f"API not reachable at {dead_url}" in shown(at, "error")

"""Compare page (AppTest against the real API): per-domain final accuracy of several runs, table and bars."""

from __future__ import annotations

import pytest

from tests.ui.conftest import ApiProcess, no_traceback, open_page, shown


def merged_acc(api: ApiProcess, run_id: int, domain: str) -> float:
    with api.http() as http:
        body = http.get(f"/runs/{run_id}/metrics", params={"key": f"acc/{domain}", "expert": "merged"}).json()
    return body["series"][0]["points"][-1]["value"]


def test_copd_against_its_baselines(ui_env: ApiProcess) -> None:
    ids = [ui_env.ids[n] for n in ("copd-done", "indep-merge-done", "indep-done")]
    at = open_page("compare", runs=",".join(map(str, ids)))
    no_traceback(at)
    assert not at.error
    table = at.dataframe[0].value
    assert list(table.index) == ["text", "image", "video", "mean"]
    copd = next(c for c in table.columns if "copd-done" in c)
    indep = next(c for c in table.columns if "indep-done" in c)
    assert table.loc["image", copd] == pytest.approx(merged_acc(ui_env, ids[0], "image"))
    assert table.loc["mean", copd] > table.loc["mean", indep]  # the seeded CoPD run learns more from its peers
    assert "indep-done (independent): image, text, video" in shown(at, "caption")  # no merge: owner experts
    [bars] = at.get("vega_lite_chart")
    assert "final accuracy per domain" in bars.proto.spec and "xOffset" in bars.proto.spec


def test_pick_runs(ui_env: ApiProcess) -> None:
    at = open_page("compare")
    assert "Pick two or more runs" in shown(at, "caption")
    at.multiselect(key="cmp_runs").set_value([ui_env.ids["copd-done"], ui_env.ids["copd-live"]]).run()
    no_traceback(at)
    table = at.dataframe[0].value
    assert len(table.columns) == 2
    live = next(c for c in table.columns if "copd-live" in c)
    assert table[live].notna().all()  # a running run compares on its experts' latest evaluation
    assert at.query_params["runs"] == f"{ui_env.ids['copd-done']},{ui_env.ids['copd-live']}"


def test_runs_without_evaluations(ui_env: ApiProcess) -> None:
    at = open_page("compare", runs=str(ui_env.ids["draft-run"]))
    no_traceback(at)
    assert "None of these runs has an evaluation yet" in shown(at, "info")


def test_api_down_is_a_readable_message(ui_env: ApiProcess, dead_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPD_API_URL", dead_url)
    at = open_page("compare")
    no_traceback(at)
    assert f"Could not list runs: API not reachable at {dead_url}" in shown(at, "error")

"""Compare page (AppTest against the real API): per-domain final accuracy of several runs, table and bars."""

from __future__ import annotations

import pytest

from tests.ui.conftest import ApiProcess, no_traceback, open_page, shown


def chart_frame(chart):
    """The (one) dataset a chart was sent with, as a pandas frame."""
    import pyarrow as pa

    return pa.ipc.open_stream(chart.proto.datasets[0].data.data).read_all().to_pandas()


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
    bars = next(c for c in at.get("vega_lite_chart") if "final accuracy per domain" in c.proto.spec)
    assert "xOffset" in bars.proto.spec


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


def test_strategies_over_seeds(ui_env: ApiProcess) -> None:
    """The experiment view: runs grouped by strategy, the paired differences to mixed RLVR (as docs/results
    reports them), per-domain accuracy with seed bands, overlap after each phase."""
    names = [f"exp-{e}-s{s}" for e in ("copd", "copd_step", "mixed_rlvr") for s in (0, 1)]
    at = open_page("compare", runs=",".join(str(ui_env.ids[n]) for n in names))
    no_traceback(at)
    assert not at.error
    summary, diffs = at.dataframe[1].value, at.dataframe[2].value
    got = {g: (n, acc) for g, n, acc in zip(summary["strategy"], summary["runs (seeds)"], summary["final mean accuracy"])}
    assert got == {"exp-copd": (2, "0.420 ± 0.014"), "exp-copd_step": (2, "0.420 ± 0.028"),
                   "exp-mixed_rlvr": (2, "0.400 ± 0.000")}
    assert at.selectbox(key="cmp_ref").value == "exp-mixed_rlvr"
    rows = dict(zip(diffs["strategy"], diffs["final mean − exp-mixed_rlvr"]))
    assert rows == {"exp-copd": "+0.020 ± 0.014", "exp-copd_step": "+0.020 ± 0.028"}
    assert set(diffs["paired seeds"]) == {"0, 1"}
    specs = [c.proto.spec for c in at.get("vega_lite_chart")]
    assert sum("accuracy on " in s for s in specs) == 3            # one band chart per domain
    chart = next(c for c in at.get("vega_lite_chart") if "overlap after each phase" in c.proto.spec)
    overlap = chart_frame(chart)
    assert set(overlap["group"]) == {"exp-copd", "exp-copd_step"}  # mixed RLVR: one policy, no overlap
    copd = overlap[overlap["group"] == "exp-copd"].sort_values("position")
    assert list(copd["position"]) == [0.5, 1.0, 1.5, 2.0]
    assert list(copd["after"]) == ["after Phase I", "after Phase II"] * 2
    assert list(copd["mean"].round(3)) == [0.705, 0.805, 0.705, 0.805]  # top-1, mean of seeds 0 and 1
    # another reference: the differences follow
    at.selectbox(key="cmp_ref").set_value("exp-copd").run()
    rows = dict(zip(at.dataframe[2].value["strategy"], at.dataframe[2].value["final mean − exp-copd"]))
    assert rows["exp-mixed_rlvr"] == "-0.020 ± 0.014"

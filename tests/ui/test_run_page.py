"""Run page (AppTest against the real API): status, co-evolution charts, OPD mixing, checkpoints, fork, events."""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
import pytest

from tests.ui.conftest import ApiProcess, button, no_traceback, open_page, shown
from tests.ui.seed import running_run


def knobs(api: ApiProcess, run_id: int) -> dict[str, Any]:
    with api.http() as http:
        return http.get(f"/runs/{run_id}/knobs").json()


def run_status(api: ApiProcess, run_id: int) -> str:
    with api.http() as http:
        return http.get(f"/runs/{run_id}").json()["status"]


def chart_rows(chart) -> list[int]:
    """Rows of each dataset a Vega-Lite chart element carries (Arrow IPC bytes)."""
    return [pa.ipc.open_stream(d.data.data).read_all().num_rows for d in chart.proto.datasets]


@pytest.fixture
def fresh(ui_env: ApiProcess, request: pytest.FixtureRequest) -> int:
    """A new running run with one checkpoint, for a test that changes it."""
    with ui_env.http() as http:
        return running_run(http, f"ui-{request.node.name[:40].replace('_', '-')}")


def test_live_run_shows_status_views_knobs_checkpoints_and_events(ui_env: ApiProcess) -> None:
    at = open_page("run", run=str(ui_env.ids["copd-live"]))
    no_traceback(at)
    assert not at.error
    assert at.title[0].value == "copd-live"
    assert ":blue-badge[running]" in shown(at, "markdown")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["cycle"] == "3 / 4" and metrics["phase"] == "rl"
    experts = at.table[0].value
    assert list(experts["current unit"]) == ["c3/rl/text", "c3/rl/image", "c3/rl/video"]
    assert {"Pause", "Cancel"} <= {b.label for b in at.button} and "Start" not in {b.label for b in at.button}
    # accuracy: one chart per domain; reward and KL; overlap over phases and the heat map; the engine's
    # logprob gap and memory
    charts = at.get("vega_lite_chart")
    assert len(charts) == 3 + 2 + 2 + 2
    assert "accuracy on text" in charts[0].proto.spec and '"strokeWidth"' in charts[0].proto.spec
    assert "Phase II (OPD)" in charts[3].proto.spec
    assert "overlap after each phase" in charts[5].proto.spec
    assert "overlap at the end of cycle 3" in charts[6].proto.spec
    assert "rollout/logp_gap" in charts[7].proto.spec and "memory/peak_gb" in charts[8].proto.spec
    assert at.slider(key=f"ov_cycle_{ui_env.ids['copd-live']}").value == 3
    # OPD mixing: values, history with where each version was applied
    text = shown(at)
    assert "Knobs at version" in text
    history = at.table[2].value
    assert "applied at cycle 1, step 61" in set(history["state"])
    assert "from the spec" in set(history["state"])
    # checkpoints and the event log
    frames = [d.value for d in at.dataframe]
    ckpts = next(f for f in frames if "URI" in f.columns)
    assert len(ckpts) == 9 and set(ckpts["expert"]) == {"text", "image", "video"}
    assert ckpts["URI"].iloc[0].startswith("file:///data/ckpt/")
    events = next(f for f in frames if "message" in f.columns)
    assert any("rollout slow" in m for m in events["message"])
    assert events["message"].iloc[-1] == "created by admin"  # newest first


def overlap_chart(at):
    """The overlap heat map (the other tabs' charts render too)."""
    return next(c for c in at.get("vega_lite_chart") if "overlap at the end of cycle" in c.proto.spec)


def test_overlap_slider_picks_the_cycle(ui_env: ApiProcess) -> None:
    rid = ui_env.ids["copd-live"]
    at = open_page("run", run=str(rid))
    at.slider(key=f"ov_cycle_{rid}").set_value(1).run()
    heat = overlap_chart(at)
    assert "end of cycle 1" in heat.proto.spec
    assert chart_rows(heat) == [6]  # 3 experts × 2 others
    at.radio(key=f"ov_kind_{rid}").set_value("top-1").run()
    assert "top-1 overlap at the end of cycle 1" in overlap_chart(at).proto.spec
    no_traceback(at)


def test_overlap_over_phases(ui_env: ApiProcess) -> None:
    """The run-level overlap after Phase I (c − ½) and after Phase II (c) of every cycle, top-k and top-1."""
    at = open_page("run", run=str(ui_env.ids["copd-live"]))
    no_traceback(at)
    chart = next(c for c in at.get("vega_lite_chart") if "overlap after each phase" in c.proto.spec)
    import pyarrow as pa

    data = pa.ipc.open_stream(chart.proto.datasets[0].data.data).read_all().to_pandas()
    top1 = data[data["measure"] == "top-1"].sort_values("position")
    assert list(top1["position"]) == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert (top1["overlap"].iloc[1::2].to_numpy() > top1["overlap"].iloc[0::2].to_numpy()).all()  # OPD recovers
    assert set(data["measure"]) == {"top-1", "top-k"}


def test_finished_run_has_a_bold_merged_line_and_no_knob_editor(ui_env: ApiProcess) -> None:
    at = open_page("run", run=str(ui_env.ids["copd-done"]))
    no_traceback(at)
    assert "completed: its knobs no longer change" in shown(at, "info")
    assert not [b for b in at.button if b.label in {"Apply", "Pause", "Start", "Cancel"}]
    acc_text = at.get("vega_lite_chart")[0]
    assert "merged" in acc_text.proto.spec
    assert chart_rows(acc_text) == [3 * 3 + 1]  # 3 experts × cycles 0..2, and the merged model at the end


def test_100k_point_run_asks_for_downsampled_series(ui_env: ApiProcess) -> None:
    t0 = time.monotonic()
    at = open_page("run", run=str(ui_env.ids["big-run"]))
    elapsed = time.monotonic() - t0
    no_traceback(at)
    reward = next(c for c in at.get("vega_lite_chart") if "reward/mean" in c.proto.spec)
    assert max(chart_rows(reward)) <= 800  # of 100,000 points stored
    assert elapsed < 30, f"big run page took {elapsed:.1f} s"


def test_pause_resume_cancel(ui_env: ApiProcess, fresh: int) -> None:
    at = open_page("run", run=str(fresh))
    button(at, "Pause").click().run()
    no_traceback(at)
    assert run_status(ui_env, fresh) == "paused"
    assert "Pause: the run is now paused." in shown(at, "success")
    assert ":orange-badge[paused]" in shown(at, "markdown")
    button(at, "Resume").click().run()
    assert run_status(ui_env, fresh) == "queued"
    button(at, "Cancel").click().run()
    assert run_status(ui_env, fresh) == "cancelled"
    assert not [b for b in at.button if b.label in {"Pause", "Resume", "Cancel"}]


def test_start_a_draft(ui_env: ApiProcess) -> None:
    with ui_env.http() as http:
        rid = http.post("/runs", json={"name": "ui-draft-start", "experts": [
            {"name": "a", "domain": "builtin:arith"}, {"name": "b", "domain": "builtin:grid"}]}).json()["id"]
    at = open_page("run", run=str(rid))
    button(at, "Start").click().run()
    no_traceback(at)
    assert run_status(ui_env, rid) == "queued"


def test_apply_beta_is_pending_until_a_worker_applies_it(ui_env: ApiProcess, fresh: int) -> None:
    at = open_page("run", run=str(fresh))
    assert button(at, "Apply").disabled  # nothing changed yet
    at.number_input(key=f"kn_beta_{fresh}_1").set_value(0.5).run()
    assert "Changes: beta: 0.5" in shown(at, "caption")
    button(at, "Apply").click().run()
    no_traceback(at)
    now = knobs(ui_env, fresh)
    assert now["version"] == 1 and now["values"]["beta"] == 0.5 and now["history"][-1]["applied"] is None
    assert "Saved version 1 (beta: 0.5): pending until a worker applies it." in shown(at, "success")
    assert "Version 1 is **pending** — beta: 0.5" in shown(at, "warning")
    assert at.number_input(key=f"kn_beta_{fresh}_2").value == 0.5  # the editor moved to the new version
    # a worker reports where it took effect
    with ui_env.http() as http:
        assert http.post(f"/runs/{fresh}/knobs/1/applied", json={"cycle": 1, "step": 7}).status_code == 200
    at.run()
    assert "pending" not in shown(at, "warning")
    assert "applied at cycle 1, step 7" in set(at.table[2].value["state"])


def test_apply_with_a_stale_version_reloads_and_says_so(ui_env: ApiProcess, fresh: int) -> None:
    at = open_page("run", run=str(fresh))  # the editor loads version 0
    with ui_env.http() as http:  # someone else saves version 1 between render and Apply
        r = http.patch(f"/runs/{fresh}/knobs", json={"expected_version": 0, "changes": {"beta": 2.0}})
        assert r.status_code == 200, r.text
    at.number_input(key=f"kn_beta_{fresh}_1").set_value(0.5).run()
    button(at, "Apply").click().run()
    no_traceback(at)
    now = knobs(ui_env, fresh)
    assert now["version"] == 1 and now["values"]["beta"] == 2.0  # our 0.5 was not saved
    warning = shown(at, "warning")
    assert "Not applied: the knobs changed meanwhile — they are now at version 1 (by admin), not 0" in warning
    assert "expected_version: 0 is stale" in warning
    assert at.number_input(key=f"kn_beta_{fresh}_2").value == 2.0  # reloaded values
    assert "(against version 1)" in shown(at, "markdown")
    # applying again now works against version 1
    at.number_input(key=f"kn_beta_{fresh}_2").set_value(0.5).run()
    button(at, "Apply").click().run()
    assert knobs(ui_env, fresh)["values"]["beta"] == 0.5


def test_apply_per_expert_beta_steps_and_teacher_weight(ui_env: ApiProcess, fresh: int) -> None:
    at = open_page("run", run=str(fresh))
    at.radio(key=f"kn_beta_mode_{fresh}_1").set_value("per expert").run()
    at.number_input(key=f"kn_beta_text_{fresh}_1").set_value(0.3)
    at.number_input(key=f"kn_rl_{fresh}_1").set_value(6)
    at.number_input(key=f"kn_opd_{fresh}_1").set_value(4).run()
    button(at, "Apply").click().run()
    no_traceback(at)
    values = knobs(ui_env, fresh)["values"]
    assert values["beta"] == {"text": 0.3, "image": 1.0, "video": 1.0}
    assert (values["rl_steps"], values["opd_steps"]) == (6, 4)
    # a second change of one expert's beta sends just that expert (it merges into the map)
    at.number_input(key=f"kn_beta_video_{fresh}_2").set_value(0.7).run()
    assert "Changes: beta: {video: 0.7}" in shown(at, "caption")
    button(at, "Apply").click().run()
    assert knobs(ui_env, fresh)["values"]["beta"] == {"text": 0.3, "image": 1.0, "video": 0.7}


def test_invalid_knob_is_shown_by_its_field(ui_env: ApiProcess, fresh: int) -> None:
    at = open_page("run", run=str(fresh))
    at.number_input(key=f"kn_lr_{fresh}_1").set_value(0.0).run()
    button(at, "Apply").click().run()
    no_traceback(at)
    assert knobs(ui_env, fresh)["version"] == 0
    errors = shown(at, "error")
    assert "Invalid (422): changes.lr" in errors and "`changes.lr`:" in errors


def test_fork_from_a_checkpoint(ui_env: ApiProcess, fresh: int) -> None:
    at = open_page("run", run=str(fresh))
    at.text_input(key=f"fork_name_{fresh}").input("ui-forked")
    at.text_area(key=f"fork_overrides_{fresh}").input("schedule: {cycles: 5}")
    button(at, "Fork").click().run()
    no_traceback(at)
    assert at.title[0].value == "ui-forked"
    child = int(at.query_params["run"])
    with ui_env.http() as http:
        run = http.get(f"/runs/{child}").json()
    assert run["parent_run_id"] == fresh and run["schedule"]["cycles"] == 5 and run["status"] == "draft"
    assert f"Forked run #{child}" in shown(at, "success")


def test_fork_with_bad_overrides_is_a_message(ui_env: ApiProcess, fresh: int) -> None:
    at = open_page("run", run=str(fresh))
    at.text_area(key=f"fork_overrides_{fresh}").input("schedule: {cycles: -3}")
    button(at, "Fork").click().run()
    no_traceback(at)
    assert "Could not fork: Invalid (422): overrides.schedule.cycles" in shown(at, "error")


def test_unknown_run_is_a_readable_404(ui_env: ApiProcess) -> None:
    at = open_page("run", run="99999")
    no_traceback(at)
    assert "Not found (404): run_id: no run 99999" in shown(at, "error")


def test_malformed_run_id(ui_env: ApiProcess) -> None:
    at = open_page("run", run="abc")
    no_traceback(at)
    assert "`?run=abc` is not a run id" in shown(at, "error")


def test_without_a_run_id_pick_one(ui_env: ApiProcess) -> None:
    at = open_page("run")
    at.selectbox(key="run_pick").set_value(ui_env.ids["paused-run"]).run()
    no_traceback(at)
    assert at.title[0].value == "paused-run"
    assert {"Resume", "Cancel"} <= {b.label for b in at.button}


def test_bad_token_is_a_readable_401(ui_env: ApiProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPD_API_TOKEN", "not-the-right-token-0123456789")
    at = open_page("run", run=str(ui_env.ids["copd-live"]))
    no_traceback(at)
    assert "Not authorized (401): Authorization: unknown or revoked token" in shown(at, "error")


def test_read_only_token_is_a_readable_403(ui_env: ApiProcess, fresh: int, monkeypatch: pytest.MonkeyPatch) -> None:
    with ui_env.http() as http:
        reader = http.post("/tokens", json={"name": "ui-reader", "role": "read"}).json()["token"]
    monkeypatch.setenv("COPD_API_TOKEN", reader)
    at = open_page("run", run=str(fresh))
    button(at, "Pause").click().run()
    no_traceback(at)
    assert "Could not pause: Forbidden (403)" in shown(at, "error")
    assert run_status(ui_env, fresh) == "running"


def test_api_down_is_a_readable_message(ui_env: ApiProcess, dead_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPD_API_URL", dead_url)
    at = open_page("run", run="1")
    no_traceback(at)
    assert f"API not reachable at {dead_url}" in shown(at, "error")


def test_samples_show_thumbnails_references_and_each_experts_answer(ui_env: ApiProcess) -> None:
    run_id = ui_env.ids["copd-live"]
    at = open_page("run", run=str(run_id))
    no_traceback(at)
    assert "Samples" in [h.value for h in at.header]
    assert at.selectbox(key=f"samples_cycle_{run_id}").value is None  # follows the latest cycle
    assert "Cycle 3's evaluation" in shown(at, "caption")
    assert [t.label for t in at.tabs][-3:] == ["text", "image", "video"]
    imgs = at.get("image")
    # image: 2 prompts × 1 thumbnail; video: 2 prompts × 3 frames; text: none
    assert sorted(len(e.proto.imgs) for e in imgs) == [1, 1, 3, 3]
    assert [i.caption for i in max(imgs, key=lambda e: len(e.proto.imgs)).proto.imgs] == ["frame 1", "frame 2", "frame 3"]
    text = shown(at, "markdown")
    assert "`image prompt 1?` → reference `3`" in text and "`text prompt 0?` → reference `3`" in text
    assert ":green[**✓ right**] · **image**: `3`" in text and ":red[**✗ wrong**] · **text**: `7`" in text
    # an earlier cycle: the image expert had not learnt its second prompt yet
    at.selectbox(key=f"samples_cycle_{run_id}").set_value(1).run()
    no_traceback(at)
    assert "Cycle 1's evaluation" in shown(at, "caption")
    assert "✓ right" not in shown(at, "markdown")


def test_samples_section_of_a_run_without_samples(ui_env: ApiProcess) -> None:
    at = open_page("run", run=str(ui_env.ids["copd-done"]))
    no_traceback(at)
    assert "No sample prompts yet" in shown(at, "info")

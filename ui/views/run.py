"""Run: lifecycle and progress, the experts' co-evolution, sample prompts and answers, OPD mixing, checkpoints
(fork) and the event log.

Opened as `/run?run=<id>`. Each live part is its own fragment, refreshed on its own timer.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st
import yaml

from contract import metrics as M
from contract.vocab import ACTIONS as LIFECYCLE
from contract.vocab import DRAFT
from ui import charts, frames
from ui.api import Api, ApiError
from ui.common import (ACTIVE, CHARTS_S, LIVE_S, client, compact, flash, fmt_bytes, fmt_duration,
                       fmt_time, run_id_param, run_label, show_error, show_flashes, status_badge)
from ui.mixing import knob_editor, knob_status
from ui.samples import samples_view

STEP_POINTS = 800  # per expert series: the API min/max-downsamples longer ones, so 100k-step runs stay fast
EVAL_POINTS = 5000  # evaluations are one point per cycle; this only guards against absurd runs
ACTIONS = {action: rule.allowed_from for action, rule in LIFECYCLE.items()}  # action → statuses it is allowed from


def pick_run(api: Api) -> None:
    """No `?run=`: choose one of the newest runs."""
    try:
        runs, _ = api.runs(limit=200)
    except ApiError as err:
        show_error(err, "Could not list runs")
        return
    if not runs:
        st.info("No runs yet.")
        st.page_link("views/new_run.py", label="Create a run", icon=":material/add:")
        return
    by_id = {r["id"]: r for r in runs}
    choice = st.selectbox("Run", list(by_id), format_func=lambda i: run_label(by_id[i]), index=None,
                          placeholder="Choose a run", key="run_pick")
    if choice is not None:
        st.query_params["run"] = str(choice)
        st.rerun()


def header(run: dict[str, Any]) -> None:
    st.title(run["name"])
    bits = [f"run #{run['id']}", run["strategy"], f"base `{run['base_model']}`", f"topology `{run['topology']}`",
            f"created {fmt_time(run['created_at'])}"]
    st.caption(" · ".join(bits))
    if run.get("parent_run_id"):
        parent = run["parent_run_id"]
        st.page_link("views/run.py", label=f"forked from run #{parent} (checkpoint #{run.get('parent_checkpoint_id')})",
                     query_params={"run": str(parent)}, icon=":material/call_split:")


@st.fragment(run_every=LIVE_S)
def status_panel(run_id: int, shown_status: str) -> None:
    """Status, cycle / phase / progress, each expert's current unit, and the lifecycle actions.

    When the status moves on (a worker finished, someone paused), the whole page reruns, so the parts
    that depend on it (the knob editor, fork) follow.
    """
    api = client()
    try:
        run = api.run(run_id)
    except ApiError as err:
        show_error(err, "Could not refresh the run")
        return
    if run["status"] != shown_status:
        st.rerun()
    c = st.columns([1, 1, 1, 1.4, 3], vertical_alignment="center")
    with c[0]:
        status_badge(run["status"])
    c[1].metric("cycle", f"{run['cycle']} / {run['schedule']['cycles']}")
    c[2].metric("phase", run.get("phase") or "—")
    c[3].metric("running for" if run["status"] in ACTIVE else "ran for",
                fmt_duration(run.get("started_at"), run.get("finished_at")))
    c[4].progress(float(run.get("progress") or 0.0), text=f"{100 * float(run.get('progress') or 0):.0f} % done")
    st.table(pd.DataFrame([{"expert": e["name"], "domain": compact(e["domain"]), "status": e.get("status") or "—",
                            "current unit": e.get("unit") or "—"} for e in run["experts"]]), hide_index=True)
    with st.container(horizontal=True):
        for action, allowed in ACTIONS.items():
            if run["status"] in allowed and st.button(action.capitalize(), key=f"act_{action}_{run_id}",
                                                      type="primary" if action in ("start", "resume") else "secondary"):
                try:
                    after = api.act(run_id, action)
                except ApiError as err:
                    show_error(err, f"Could not {action}")
                    return
                flash("run", "success", f"{action.capitalize()}: the run is now {after['status']}.")
                st.rerun()


def _series(api: Api, run_id: int, keys: list[str], max_points: int, *, cycle: bool = False) -> pd.DataFrame:
    """Several keys' series (every expert) in one tidy frame (with the points' cycle when asked)."""
    return pd.concat([api.metrics(run_id, key=k, max_points=max_points, cycle=cycle) for k in keys],
                     ignore_index=True)


@st.fragment(run_every=CHARTS_S)
def coevolution(run_id: int, experts: list[str]) -> None:
    """(1) accuracy per domain per cycle, (2) reward and OPD KL per step with phases shaded, (3) overlap."""
    api = client()
    try:
        acc = frames.accuracy_by_cycle(_series(api, run_id, [M.ACC.key_for(d) for d in experts], EVAL_POINTS,
                                               cycle=True))
    except ApiError as err:
        show_error(err, "Could not load metrics")
        return
    acc_tab, step_tab, overlap_tab, engine_tab = st.tabs(["Accuracy per cycle", "Reward & OPD KL", "Top-k overlap",
                                                         "Engine & memory"])
    with acc_tab:
        if acc.empty:
            st.info("No evaluation yet: accuracy appears after cycle 0's evaluation.")
        cols = st.columns(min(len(experts), 3))
        for i, domain in enumerate(experts if not acc.empty else []):
            cols[i % len(cols)].altair_chart(charts.accuracy_chart(acc, domain, experts), width="stretch")
    with step_tab:
        step_views(api, run_id, experts, (M.REWARD.key, M.OPD_KL.key))
    with overlap_tab:
        overlap_view(api, run_id, experts, acc)
    with engine_tab:
        step_views(api, run_id, experts, (M.LOGP_GAP.key, M.PEAK_MEMORY.key))
        st.caption("rollout/logp_gap: mean |log π_trainer − log π_sampler| of the sampled tokens (the rollout "
                   "engine against the trainer's own forward; corrected by truncated importance sampling). "
                   "memory/peak_gb: the unit process's peak (CUDA allocated on a GPU, RSS on a CPU).")


PHASE_II_ONLY = {d.key for d in M.REGISTRY if d.phase == "opd"}  # series with points in Phase II only: drawn with gaps between the phases


def step_views(api: Api, run_id: int, experts: list[str], keys: tuple[str, str]) -> None:
    """Two per-step series side by side, every expert a line, Phase I / II shaded."""
    try:
        phase = api.metrics(run_id, key=M.PHASE.key, expert=experts[0], max_points=STEP_POINTS)
        series = [api.metrics(run_id, key=k, max_points=STEP_POINTS) for k in keys]
    except ApiError as err:
        show_error(err, "Could not load step metrics")
        return
    spans = frames.phase_spans(phase)
    if all(s.empty for s in series):
        st.info("No training steps reported yet.")
        return
    for col, data, title in zip(st.columns(len(keys)), series, keys):
        if data.empty:
            col.info(f"No `{title}` points yet.")
        else:
            data = frames.break_gaps(data) if title in PHASE_II_ONLY else data
            col.altair_chart(charts.step_chart(data, spans, title, experts), width="stretch")
    st.caption(f"Shaded: Phase I (RLVR) and Phase II (mutual OPD). Series longer than {STEP_POINTS} points are "
               "min/max-downsampled by the API.")


OVERLAP_PHASE_KEYS = (M.OVERLAP_MEAN.key, M.OVERLAP_TOP1_MEAN.key, M.OVERLAP_RL_MEAN.key, M.OVERLAP_TOP1_RL_MEAN.key)


def overlap_view(api: Api, run_id: int, experts: list[str], acc: pd.DataFrame) -> None:
    """The run-level overlap after each phase of every cycle, then one cycle's expert × expert matrix."""
    try:
        phases = frames.overlap_phases(_series(api, run_id, list(OVERLAP_PHASE_KEYS), EVAL_POINTS, cycle=True))
    except ApiError as err:
        show_error(err, "Could not load overlap")
        return
    if not phases.empty:
        st.altair_chart(charts.overlap_phase_chart(phases[phases["position"] > 0]), width="stretch")
        st.caption("Mean over every ordered pair of experts, measured on each expert's own samples: after Phase I "
                   "(RLVR) the experts drift apart, mutual OPD in Phase II brings them back.")
    kind = st.radio("measure", ["top-k", "top-1"], horizontal=True, key=f"ov_kind_{run_id}")
    after = st.radio("after", ["Phase II (cycle end)", "Phase I"], horizontal=True, key=f"ov_after_{run_id}")
    keys = ((M.OVERLAP, M.OVERLAP_TOP1) if after.startswith("Phase II") else (M.OVERLAP_RL, M.OVERLAP_TOP1_RL))
    prefix = keys[0].prefix if kind == "top-k" else keys[1].prefix
    try:
        overlap = _series(api, run_id, [f"{prefix}{j}" for j in experts], EVAL_POINTS, cycle=True)
    except ApiError as err:
        show_error(err, "Could not load overlap")
        return
    cycles = sorted(c for c in acc["cycle"].unique() if c >= 1) if not acc.empty else []
    if overlap.empty or not cycles:
        st.info("No overlap measured yet: it is measured at the end of every cycle from cycle 1 on.")
        return
    cycle = cycles[0] if len(cycles) == 1 else st.slider("cycle", min_value=int(cycles[0]), max_value=int(cycles[-1]),
                                                         value=int(cycles[-1]), key=f"ov_cycle_{run_id}")
    matrix = frames.overlap_matrix(overlap, frames.eval_steps(acc), int(cycle), experts, prefix)
    if matrix.empty:
        st.info(f"No overlap reported for cycle {cycle}.")
        return
    where = f"at the end of cycle {cycle}" if after.startswith("Phase II") else f"after Phase I of cycle {cycle}"
    st.altair_chart(charts.overlap_heatmap(matrix, experts, f"{kind} overlap {where}"), width="content")


@st.fragment(run_every=CHARTS_S)
def checkpoint_table(run_id: int) -> None:
    try:
        items, total = client().checkpoints(run_id)
    except ApiError as err:
        show_error(err, "Could not list checkpoints")
        return
    if not items:
        st.info("No checkpoints yet.")
        return
    st.dataframe(pd.DataFrame([{"id": c["id"], "cycle": c["cycle"], "expert": c["expert"], "step": c["step"],
                                "size": fmt_bytes(c.get("bytes")), "final": c.get("final", False),
                                "metrics": compact(c.get("metrics") or {}), "URI": c["uri"]} for c in items]),
                 hide_index=True)
    if total > len(items):
        st.caption(f"{len(items)} of {total} shown.")


def fork_form(api: Api, run: dict[str, Any]) -> None:
    """Fork from one of this run's checkpoints: a new draft run that starts from it."""
    try:
        items, _ = api.checkpoints(run["id"])
    except ApiError as err:
        show_error(err, "Could not list checkpoints")
        return
    if not items:
        st.caption("Forking needs a checkpoint.")
        return
    by_id = {c["id"]: c for c in items}
    ckpt_id = st.selectbox("Checkpoint", list(by_id), key=f"fork_ckpt_{run['id']}", format_func=lambda i: (
        f"#{i} · cycle {by_id[i]['cycle']} · {by_id[i]['expert']} · step {by_id[i]['step']}"))
    ckpt = by_id[ckpt_id]
    name = st.text_input("New run name", f"{run['name']}-fork", key=f"fork_name_{run['id']}")
    text = st.text_area("Overrides (YAML, optional)", "", key=f"fork_overrides_{run['id']}",
                        placeholder="schedule: {cycles: 6}\nopd: {beta: 0.5}")
    if st.button("Fork", key=f"fork_go_{run['id']}"):
        try:
            overrides = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            st.error(f"Overrides are not valid YAML: {err}")
            return
        if overrides is not None and not isinstance(overrides, dict):
            st.error("Overrides must be a mapping of spec fields.")
            return
        try:
            child = api.fork(run["id"], ckpt["id"], name=name.strip() or None, overrides=overrides)
        except ApiError as err:
            show_error(err, "Could not fork")
            return
        flash("run", "success", f"Forked run #{child['id']} ({child['name']}) from checkpoint #{ckpt['id']}.")
        st.switch_page("views/run.py", query_params={"run": str(child["id"])})


@st.fragment(run_every=LIVE_S)
def event_log(run_id: int) -> None:
    """New events since the last poll (after_id), newest first; the last 1,000 are kept."""
    key = f"events_{run_id}"
    seen = st.session_state.setdefault(key, {"last": 0, "items": []})
    try:
        for _ in range(20):  # at most 10,000 new events per poll
            items, total = client().events(run_id, after_id=seen["last"], limit=500)
            if items:
                seen["items"] = (seen["items"] + items)[-1000:]
                seen["last"] = items[-1]["id"]
            if len(items) < 500:
                break
    except ApiError as err:
        show_error(err, "Could not read events")
    levels = st.segmented_control("level", ["debug", "info", "warning", "error"], selection_mode="multi",
                                  default=["info", "warning", "error"], key=f"ev_levels_{run_id}")
    rows = [{"time": fmt_time(e["time"]), "level": e["level"], "expert": e.get("expert") or "",
             "message": e["message"]} for e in reversed(seen["items"]) if e["level"] in (levels or [])]
    if not rows:
        st.caption("No events.")
        return
    st.dataframe(pd.DataFrame(rows), hide_index=True, height=min(38 + 35 * len(rows), 420))


def main() -> None:
    api = client()
    run_id = run_id_param()
    if run_id is None:
        st.title("Run")
        pick_run(api)
        return
    try:
        run = api.run(run_id)
    except ApiError as err:
        st.title(f"Run #{run_id}")
        show_error(err)
        st.page_link("views/runs.py", label="All runs", icon=":material/list:")
        return
    experts = [e["name"] for e in run["experts"]]
    header(run)
    show_flashes("run")
    status_panel(run_id, run["status"])
    st.header("Co-evolution", divider="gray")
    coevolution(run_id, experts)
    st.header("Samples", divider="gray")
    samples_view(run_id, experts)
    st.header("OPD mixing", divider="gray")
    left, right = st.columns(2, gap="large")
    with left:
        knob_status(run_id, experts, float(run["opd"]["beta"]))
    with right:
        knob_editor(run_id, experts, run["status"], float(run["opd"]["beta"]))
    st.header("Checkpoints", divider="gray")
    checkpoint_table(run_id)
    if run["status"] != DRAFT:
        with st.expander("Fork from a checkpoint"):
            fork_form(api, run)
    st.header("Event log", divider="gray")
    event_log(run_id)


main()

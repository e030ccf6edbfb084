"""Runs: every run with its status, progress and merged-model accuracy; filters; open or create one."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from contract import metrics as M
from contract.vocab import DRAFT, MERGED, QUEUED
from ui.api import Api, ApiError
from ui.common import LIVE_S, client, fmt_duration, fmt_time, show_error, vocab
PAGE_SIZE = 100


@st.cache_data(ttl=30, show_spinner=False)
def _merged_mean(_api: Api, base_url: str, run_id: int, finished_at: str | None) -> float | None:
    """The merged model's `acc_mean` (None until the merge was evaluated); cached per run and finish time."""
    series = _api.metrics(run_id, key=M.ACC_MEAN.key, expert=MERGED, max_points=2)
    return float(series.sort_values("step")["value"].iloc[-1]) if not series.empty else None


def _row(api: Api, run: dict[str, Any]) -> dict[str, Any]:
    acc = None
    if run["status"] not in (DRAFT, QUEUED):
        try:
            acc = _merged_mean(api, api.base_url, run["id"], run.get("finished_at"))
        except ApiError:
            acc = None  # the table still shows; a missing number is not worth an error box
    return {
        "id": run["id"], "open": f"/run?run={run['id']}", "name": run["name"], "strategy": run["strategy"],
        "status": run["status"], "cycle": f"{run['cycle']} / {run['schedule']['cycles']}",
        "progress": float(run.get("progress") or 0.0), "merged acc (mean)": acc,
        "started": fmt_time(run.get("started_at")),
        "duration": fmt_duration(run.get("started_at"), run.get("finished_at")),
    }


st.title("Runs")
top = st.columns([3, 3, 3, 1.2], vertical_alignment="bottom")
words = vocab()
statuses = top[0].multiselect("Status", words.statuses, key="runs_status")
strategies = top[1].multiselect("Strategy", [s.name for s in words.strategies], key="runs_strategy")
name_part = top[2].text_input("Name contains", key="runs_name").strip().lower()
top[3].page_link("views/new_run.py", label="New run", icon=":material/add:")


@st.fragment(run_every=LIVE_S * 3)
def runs_table(statuses: list[str], strategies: list[str], name_part: str) -> None:
    """The table, refreshed on its own so progress and status stay current."""
    api = client()
    offset = st.session_state.get("runs_offset", 0)
    try:
        runs, total = api.runs(status=statuses, limit=PAGE_SIZE, offset=offset)
    except ApiError as err:
        show_error(err, "Could not list runs")
        return
    shown = [r for r in runs if (not strategies or r["strategy"] in strategies)
             and (not name_part or name_part in r["name"].lower())]
    if not shown:
        st.info("No runs match." if total else "No runs yet — create one with **New run**.")
        return
    table = pd.DataFrame([_row(api, r) for r in shown])
    picked = st.dataframe(table, hide_index=True, on_select="rerun", selection_mode="single-row", column_config={
        "id": st.column_config.NumberColumn("id", width="small"),
        "open": st.column_config.LinkColumn("open", display_text="open", width="small"),
        "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
        "merged acc (mean)": st.column_config.NumberColumn(format="%.3f"),
    })
    if picked.selection.rows:  # a click on a row opens that run
        st.switch_page("views/run.py", query_params={"run": str(table["id"].iloc[picked.selection.rows[0]])})
    st.caption(f"Select a row to open its run. {len(shown)} shown of {total} runs "
               f"(newest first; {offset + 1}–{offset + len(runs)}).")
    if total > PAGE_SIZE:
        pages = (total + PAGE_SIZE - 1) // PAGE_SIZE
        page = st.number_input("Page", 1, pages, offset // PAGE_SIZE + 1, key="runs_page")
        if (page - 1) * PAGE_SIZE != offset:
            st.session_state["runs_offset"] = (page - 1) * PAGE_SIZE
            st.rerun()


runs_table(statuses, strategies, name_part)

with st.container(horizontal=True, vertical_alignment="bottom"):
    target = st.number_input("Run id", min_value=1, step=1, value=None, key="runs_open_id",
                             placeholder="id", width=160)
    if st.button("Open run", disabled=target is None):
        st.switch_page("views/run.py", query_params={"run": str(int(target))})

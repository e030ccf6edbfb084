"""Compare: per-domain final accuracy of several runs (say CoPD and its baselines), as a table and bars."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from contract import metrics as M
from ui import charts, frames
from ui.api import Api, ApiError
from ui.common import client, run_label, show_error

EVAL_POINTS = 5000


@st.cache_data(ttl=15, show_spinner=False)
def final_of(_api: Api, base_url: str, run_id: int, domains: tuple[str, ...], status: str) -> pd.DataFrame:
    """(domain, accuracy, source) of one run; cached briefly per run and status."""
    acc = pd.concat([_api.metrics(run_id, key=M.ACC.key_for(d), max_points=EVAL_POINTS, cycle=True) for d in domains],
                    ignore_index=True)
    return frames.final_accuracy(frames.accuracy_by_cycle(acc), domains)


def preselected(ids: list[int]) -> list[int]:
    """Run ids named in `?runs=1,2,3` (and listed), else none."""
    wanted = {s.strip() for s in st.query_params.get("runs", "").split(",") if s.strip()}
    return [i for i in ids if str(i) in wanted]


st.title("Compare runs")
api = client()
try:
    runs, total = api.runs(limit=500)
except ApiError as err:
    show_error(err, "Could not list runs")
    st.stop()
if not runs:
    st.info("No runs yet.")
    st.stop()
by_id = {r["id"]: r for r in runs}
picked_ids = st.multiselect("Runs", list(by_id), default=preselected(list(by_id)), key="cmp_runs",
                            format_func=lambda i: run_label(by_id[i]), placeholder="Pick CoPD and its baselines")
picked = [by_id[i] for i in picked_ids]
if not picked:
    st.caption("Pick two or more runs; finished runs compare best (the merged model is evaluated at the end).")
    st.stop()
st.query_params["runs"] = ",".join(str(r["id"]) for r in picked)

parts = []
for r in picked:
    domains = tuple(e["name"] for e in r["experts"])  # a domain is named by the expert that owns it
    try:
        final = final_of(api, api.base_url, r["id"], domains, r["status"])
    except ApiError as err:
        show_error(err, f"Run #{r['id']}")
        continue
    parts.append(final.assign(run=f"#{r['id']} {r['name']} ({r['strategy']})"))
final = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
if final.empty:
    st.info("None of these runs has an evaluation yet.")
    st.stop()

table = final.pivot_table(index="domain", columns="run", values="accuracy", sort=False)
table.loc["mean"] = table.mean(numeric_only=True)
st.dataframe(table.style.format("{:.3f}", na_rep="—").highlight_max(axis=1, color="#d4f4dd"))
sources = final.groupby("run")["source"].agg(lambda s: ", ".join(sorted(set(s))))
st.caption("Final accuracy: the merged model's last evaluation where there is one, else the owning expert's. "
           "Models used — " + "; ".join(f"{run}: {src}" for run, src in sources.items()))
st.altair_chart(charts.compare_bars(final), width="stretch")

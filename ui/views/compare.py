"""Compare: CoPD and its baselines over seeds — final accuracy per run, strategies with seed bands, per-domain
accuracy over cycles, overlap after each phase, and the paired differences to a reference (mixed RLVR)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from contract import metrics as M
from ui import charts, frames
from ui.api import Api, ApiError
from ui.common import client, run_label, show_error

EVAL_POINTS = 5000
OVERLAP_KEYS = (M.OVERLAP_MEAN.key, M.OVERLAP_TOP1_MEAN.key, M.OVERLAP_RL_MEAN.key, M.OVERLAP_TOP1_RL_MEAN.key)


@st.cache_data(ttl=15, show_spinner=False)
def accuracy_of(_api: Api, base_url: str, run_id: int, domains: tuple[str, ...], status: str) -> pd.DataFrame:
    """(expert, domain, cycle, step, accuracy) of one run; cached briefly per run and status."""
    acc = pd.concat([_api.metrics(run_id, key=M.ACC.key_for(d), max_points=EVAL_POINTS, cycle=True) for d in domains],
                    ignore_index=True)
    return frames.accuracy_by_cycle(acc)


@st.cache_data(ttl=15, show_spinner=False)
def overlap_of(_api: Api, base_url: str, run_id: int, status: str) -> pd.DataFrame:
    """frames.overlap_phases of one run (its run-level overlap means)."""
    parts = [_api.metrics(run_id, key=k, expert="", max_points=EVAL_POINTS, cycle=True) for k in OVERLAP_KEYS]
    return frames.overlap_phases(pd.concat(parts, ignore_index=True))


def preselected(ids: list[int]) -> list[int]:
    """Run ids named in `?runs=1,2,3` (and listed), else none."""
    wanted = {s.strip() for s in st.query_params.get("runs", "").split(",") if s.strip()}
    return [i for i in ids if str(i) in wanted]


def fmt_pm(mean: float, sd: float, n: int) -> str:
    return "—" if pd.isna(mean) else f"{mean:+.3f} ± {sd:.3f}" if n > 1 else f"{mean:+.3f}"


def final_section(picked: list[dict], accs: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """The per-run table and bars of final accuracy; returns (group, seed, run, domain, accuracy, source)."""
    parts = []
    for r in picked:
        domains = [e["name"] for e in r["experts"]]
        final = frames.final_accuracy(accs[r["id"]], domains)
        parts.append(final.assign(run=f"#{r['id']} {r['name']} ({r['strategy']})", group=frames.run_group(r),
                                  seed=r.get("seed", 0)))
    final = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if final.empty:
        return final
    table = final.pivot_table(index="domain", columns="run", values="accuracy", sort=False)
    table.loc["mean"] = table.mean(numeric_only=True)
    st.dataframe(table.style.format("{:.3f}", na_rep="—").highlight_max(axis=1, color="#d4f4dd"))
    sources = final.groupby("run")["source"].agg(lambda s: ", ".join(sorted(set(s))))
    st.caption("Final accuracy: the merged model's last evaluation where there is one, else the owning expert's. "
               "Models used — " + "; ".join(f"{run}: {src}" for run, src in sources.items()))
    st.altair_chart(charts.compare_bars(final), width="stretch")
    return final


def strategies_section(picked: list[dict], accs: dict[int, pd.DataFrame], final: pd.DataFrame, api: Api) -> None:
    """Runs grouped by strategy: final mean ± sd, paired differences, accuracy per cycle and overlap per phase."""
    st.subheader("Strategies over seeds")
    means = (final.groupby(["group", "seed", "run"], sort=False)["accuracy"].mean().reset_index())
    summary = frames.seed_band(means, ["group"], "accuracy")
    st.dataframe(pd.DataFrame({
        "strategy": summary["group"], "runs (seeds)": summary["n"],
        "final mean accuracy": [f"{m:.3f} ± {s:.3f}" if n > 1 else f"{m:.3f}"
                                for m, s, n in zip(summary["mean"], summary["sd"], summary["n"])]}),
        hide_index=True)
    groups = list(summary["group"])
    if len(groups) > 1:
        default = next((i for i, g in enumerate(groups) if "mixed" in g and "token" not in g), 0)
        ref = st.selectbox("Paired differences against", groups, index=default, key="cmp_ref")
        diffs = frames.paired_differences(means, ref)
        st.dataframe(pd.DataFrame({"strategy": diffs["group"],
                                   f"final mean − {ref}": [fmt_pm(m, s, n) for m, s, n in
                                                           zip(diffs["mean"], diffs["sd"], diffs["n"])],
                                   "paired seeds": diffs["seeds"]}), hide_index=True)
        st.caption("Mean over the domains of each run's all-in-one model, minus the reference's of the same seed; "
                   "mean ± sd over the seeds both have (as docs/results reports).")
    curves = []
    for r in picked:
        pol = frames.policy_accuracy(accs[r["id"]], [e["name"] for e in r["experts"]])
        curves.append(pol.assign(group=frames.run_group(r), seed=r.get("seed", 0)))
    curve = pd.concat(curves, ignore_index=True)
    if not curve.empty:
        band = frames.seed_band(curve, ["group", "domain", "cycle"], "accuracy")
        cols = st.columns(min(3, band["domain"].nunique()))
        for i, d in enumerate(dict.fromkeys(band["domain"])):
            cols[i % len(cols)].altair_chart(
                charts.band_chart(band[band["domain"] == d], "cycle", f"accuracy on {d}", "accuracy"), width="stretch")
        st.caption("Per cycle, the policy each strategy trains for the domain (its expert, or the one mixed "
                   "policy / student); line: mean over seeds, band: ± sd.")
    overlap_section(picked, api)


def overlap_section(picked: list[dict], api: Api) -> None:
    """Run-level overlap after each phase, mean over each strategy's seeds."""
    parts = []
    for r in picked:
        try:
            ov = overlap_of(api, api.base_url, r["id"], r["status"])
        except ApiError as err:
            show_error(err, f"Run #{r['id']}")
            continue
        parts.append(ov.assign(group=frames.run_group(r)))
    ov = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if ov.empty:
        st.info("No overlap measured in these runs (it needs several experts).")
        return
    measure = st.radio("overlap", ["top-1", "top-k"], horizontal=True, key="cmp_overlap")
    sel = ov[ov["measure"] == measure]
    if sel.empty:
        st.info(f"No {measure} overlap in these runs.")
        return
    band = frames.seed_band(sel, ["group", "position", "after", "cycle", "measure"], "overlap")
    st.altair_chart(charts.overlap_phase_chart(band, color="group", title=f"{measure} overlap after each phase"),
                    width="stretch")


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
    st.caption("Pick two or more runs; finished runs compare best (the merged model is evaluated at the end). "
               "Runs of several seeds are grouped by strategy (`copd compare --api` names them `<suite>-<entry>-s<seed>`).")
    st.stop()
st.query_params["runs"] = ",".join(str(r["id"]) for r in picked)

accs: dict[int, pd.DataFrame] = {}
for r in list(picked):
    try:
        accs[r["id"]] = accuracy_of(api, api.base_url, r["id"], tuple(e["name"] for e in r["experts"]), r["status"])
    except ApiError as err:
        show_error(err, f"Run #{r['id']}")
        picked.remove(r)
final = final_section(picked, accs)
if final.empty:
    st.info("None of these runs has an evaluation yet.")
    st.stop()
strategies_section([r for r in picked if r["id"] in accs], accs, final, api)

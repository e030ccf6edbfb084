"""Tidy frames → Altair charts. Experts keep one colour in every chart; the merged model is a bold black line."""

from __future__ import annotations

from typing import Sequence

import altair as alt
import pandas as pd

from ui.frames import MERGED

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]
PHASE_COLORS = alt.Scale(domain=["Phase I (RLVR)", "Phase II (OPD)"], range=["#4c78a8", "#f58518"])


def expert_colors(experts: Sequence[str], merged: bool = True) -> alt.Scale:
    """A fixed expert → colour mapping (merged in black), so one expert looks the same everywhere."""
    names = [e for e in experts if e != MERGED]
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(names))]
    if not merged:
        return alt.Scale(domain=names, range=colors)
    return alt.Scale(domain=[*names, MERGED], range=[*colors, "#000000"])


def accuracy_chart(acc: pd.DataFrame, domain: str, experts: Sequence[str], height: int = 300) -> alt.LayerChart:
    """One domain: accuracy per cycle, one line per expert, the merged model bold."""
    data = acc[acc["domain"] == domain]
    is_merged = alt.datum.expert == MERGED
    base = alt.Chart(data).encode(
        x=alt.X("cycle:Q", title="cycle", axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y("accuracy:Q", title="accuracy", scale=alt.Scale(zero=False)),
        color=alt.Color("expert:N", scale=expert_colors(experts),
                        legend=alt.Legend(orient="bottom", title=None, columns=3)),
        tooltip=["expert", "cycle", "step", alt.Tooltip("accuracy:Q", format=".3f")],
    )
    lines = base.mark_line().encode(strokeWidth=alt.condition(is_merged, alt.value(4), alt.value(1.8)))
    points = base.mark_point(filled=True).encode(size=alt.condition(is_merged, alt.value(120), alt.value(30)))
    return alt.layer(lines, points, title=f"accuracy on {domain}").properties(height=height)


def step_chart(series: pd.DataFrame, spans: pd.DataFrame, title: str, experts: Sequence[str],
               height: int = 320) -> alt.LayerChart:
    """A per-step series, one line per expert, over shaded Phase I / Phase II step ranges."""
    lines = alt.Chart(series).mark_line(strokeWidth=1.5).encode(
        x=alt.X("step:Q", title="step"), y=alt.Y("value:Q", title=title, scale=alt.Scale(zero=False)),
        color=alt.Color("expert:N", scale=expert_colors(experts, merged=False),
                        legend=alt.Legend(orient="bottom", title=None, columns=4)),
        tooltip=["expert", "step", alt.Tooltip("value:Q", format=".4g")],
    )
    if spans.empty:
        return alt.layer(lines, title=title).properties(height=height)
    shade = alt.Chart(spans).mark_rect(opacity=0.12).encode(
        x="start:Q", x2="end:Q",
        fill=alt.Fill("phase:N", scale=PHASE_COLORS, legend=alt.Legend(title=None, orient="top")),
    )
    return alt.layer(shade, lines, title=title).resolve_scale(color="independent").properties(height=height)


def overlap_heatmap(matrix: pd.DataFrame, experts: Sequence[str], title: str, cell: int = 100) -> alt.LayerChart:
    """Row = the expert on whose states overlap is measured, column = the other expert."""
    base = alt.Chart(matrix, title=title).encode(
        x=alt.X("other:N", title="other expert", sort=list(experts), axis=alt.Axis(labelAngle=0)),
        y=alt.Y("expert:N", title="expert (its states)", sort=list(experts)),
    )
    cells = base.mark_rect().encode(
        color=alt.Color("overlap:Q", scale=alt.Scale(scheme="viridis"), title="overlap"),
        tooltip=["expert", "other", alt.Tooltip("overlap:Q", format=".3f")])
    middle = (matrix["overlap"].min() + matrix["overlap"].max()) / 2 if not matrix.empty else 0.5
    labels = base.mark_text(fontSize=14).encode(  # dark viridis cells get white text
        text=alt.Text("overlap:Q", format=".3f"),
        color=alt.condition(alt.datum.overlap > middle, alt.value("black"), alt.value("white")))
    n = max(len(experts), 2)  # Streamlit fits the whole chart (axes, legend) into width × height
    return alt.layer(cells, labels).properties(width=cell * n + 180, height=cell * n // 2 + 110)


def compare_bars(final: pd.DataFrame) -> alt.Chart:
    """Per-domain final accuracy, one bar per run, grouped by domain (in the order the frame lists them)."""
    domains = list(dict.fromkeys(final["domain"]))
    return alt.Chart(final, title="final accuracy per domain").mark_bar().encode(
        x=alt.X("domain:N", title="domain", sort=domains, axis=alt.Axis(labelAngle=0)), xOffset="run:N",
        y=alt.Y("accuracy:Q", title="accuracy"),
        color=alt.Color("run:N", legend=alt.Legend(orient="bottom", title=None, labelLimit=400, columns=2)),
        tooltip=["run", "domain", "source", alt.Tooltip("accuracy:Q", format=".3f")],
    ).properties(height=380)


def band_chart(band: pd.DataFrame, x: str, title: str, y_title: str, height: int = 280) -> alt.LayerChart:
    """Mean over seeds per group (a line) inside its mean ± sd band (shaded): `band` from frames.seed_band."""
    base = alt.Chart(band).encode(
        x=alt.X(f"{x}:Q", title=x, axis=alt.Axis(tickMinStep=0.5)),
        color=alt.Color("group:N", legend=alt.Legend(orient="bottom", title=None, columns=2, labelLimit=300)))
    area = base.mark_area(opacity=0.18).encode(y=alt.Y("lo:Q", title=y_title, scale=alt.Scale(zero=False)), y2="hi:Q")
    line = base.mark_line(point=True).encode(
        y="mean:Q", tooltip=["group", alt.Tooltip(f"{x}:Q"), alt.Tooltip("mean:Q", format=".3f"),
                             alt.Tooltip("sd:Q", format=".3f"), "n"])
    return alt.layer(area, line, title=title).properties(height=height)


def overlap_phase_chart(data: pd.DataFrame, color: str = "measure", title: str = "overlap after each phase",
                        height: int = 280) -> alt.LayerChart:
    """Overlap after Phase I (at c − 0.5) and after Phase II (at c) of every cycle: the dip in RLVR and the
    recovery in OPD. `data`: frames.overlap_phases rows (with `mean`, or `overlap`), one line per `color`."""
    y = "mean" if "mean" in data else "overlap"
    base = alt.Chart(data).encode(
        x=alt.X("position:Q", title="cycle (c − ½: after its Phase I; c: after its Phase II)",
                axis=alt.Axis(tickMinStep=0.5)),
        y=alt.Y(f"{y}:Q", title="overlap", scale=alt.Scale(zero=False)),
        color=alt.Color(f"{color}:N", legend=alt.Legend(orient="bottom", title=None, columns=2, labelLimit=300)),
        tooltip=[color, "after", "cycle", alt.Tooltip(f"{y}:Q", format=".3f")])
    lines = base.mark_line()  # one measure per colour: the page picks top-k or top-1 when colours are runs
    points = base.mark_point(filled=True, size=50).encode(shape=alt.Shape("after:N", legend=alt.Legend(title=None)))
    return alt.layer(lines, points, title=title).properties(height=height)

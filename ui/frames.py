"""Pure pandas: the API's tidy metric frames (expert, key, step, value[, cycle]) → the frames each view plots.

Points carry their cycle (the `cycle` column) when the worker that posted them knew it. Points of older
runs have none; for them an evaluation's cycle comes from order: the n-th `acc/*` point of an expert
(0-based) is cycle n, and the merged model, evaluated at the end, is aligned to the last cycle.
"""

from __future__ import annotations

from typing import Iterable

import pandas as pd

from contract.metrics import ACC
from contract.vocab import MERGED

ACC_COLUMNS = ["expert", "domain", "cycle", "step", "accuracy"]


def accuracy_by_cycle(acc: pd.DataFrame) -> pd.DataFrame:
    """Rows (expert, domain, cycle, step, accuracy) from `acc/<domain>` points of every expert."""
    acc = acc[acc["key"].str.startswith(ACC.prefix)]
    if acc.empty:
        return pd.DataFrame(columns=ACC_COLUMNS)
    out = acc.assign(domain=acc["key"].str.removeprefix(ACC.prefix)).sort_values(["expert", "domain", "step"])
    if "cycle" in out and out["cycle"].notna().all():  # carried end to end: nothing to infer
        out = out.rename(columns={"value": "accuracy"})[ACC_COLUMNS]
        return out.astype({"cycle": int, "step": int}).reset_index(drop=True)
    out["cycle"] = out.groupby(["expert", "domain"]).cumcount()
    experts = out[out["expert"] != MERGED]
    last = int(experts["cycle"].max()) if not experts.empty else 0
    merged = out["expert"] == MERGED
    if merged.any():  # evaluated after the last cycle: align its points to the end
        n = out[merged].groupby("domain")["cycle"].transform("max")
        out.loc[merged, "cycle"] = last - n + out.loc[merged, "cycle"]
    out = out.rename(columns={"value": "accuracy"})[ACC_COLUMNS]
    return out.astype({"cycle": int, "step": int}).reset_index(drop=True)


def eval_steps(acc_cycles: pd.DataFrame) -> dict[tuple[str, int], int]:
    """(expert, cycle) → the step at which that expert was evaluated for that cycle."""
    first = acc_cycles.drop_duplicates(["expert", "cycle"])
    return {(e, int(c)): int(s) for e, c, s in zip(first["expert"], first["cycle"], first["step"])}


def overlap_matrix(overlap: pd.DataFrame, steps: dict[tuple[str, int], int], cycle: int,
                   experts: Iterable[str], prefix: str = "overlap/") -> pd.DataFrame:
    """Rows (expert, other, overlap) at `cycle`: key `<prefix><other>` of `expert` at its eval step.

    Cells with no measurement (the diagonal, a missing point) are left out.
    """
    rows = []
    by_series = {(e, k): g for (e, k), g in overlap.groupby(["expert", "key"])} if not overlap.empty else {}
    for i in experts:
        step = steps.get((i, cycle))
        for j in experts:
            g = by_series.get((i, f"{prefix}{j}"))
            if i == j or g is None or step is None:
                continue
            hit = g[g["step"] == step]
            if not hit.empty:
                rows.append((i, j, float(hit["value"].iloc[-1])))
    return pd.DataFrame(rows, columns=["expert", "other", "overlap"])


def phase_spans(phase: pd.DataFrame) -> pd.DataFrame:
    """Contiguous Phase I / Phase II step ranges (start, end, phase) from one expert's `phase` series."""
    if phase.empty:
        return pd.DataFrame(columns=["start", "end", "phase"])
    first = phase["expert"].dropna().iloc[0] if phase["expert"].notna().any() else None
    s = phase[phase["expert"] == first] if first is not None else phase
    s = s.sort_values("step").drop_duplicates("step", keep="last")
    steps, values = s["step"].to_numpy(), s["value"].round().astype(int).to_numpy()
    spans, start = [], 0
    for i in range(1, len(steps) + 1):
        if i == len(steps) or values[i] != values[start]:
            end = steps[i] - 0.5 if i < len(steps) else steps[-1] + 0.5
            spans.append((steps[start] - 0.5, end, "Phase I (RLVR)" if values[start] == 1 else "Phase II (OPD)"))
            start = i
    return pd.DataFrame(spans, columns=["start", "end", "phase"])


def final_accuracy(acc_cycles: pd.DataFrame, domains: Iterable[str]) -> pd.DataFrame:
    """Rows (domain, accuracy, source): the merged model's last accuracy, else the owning expert's.

    A run with neither (a single mixed policy, a distilled student) falls back to whichever model was
    evaluated last on that domain.
    """
    rows = []
    for d in domains:
        on_d = acc_cycles[acc_cycles["domain"] == d]
        for who in (MERGED, d, None):
            pts = on_d if who is None else on_d[on_d["expert"] == who]
            if not pts.empty:
                last = pts.sort_values(["cycle", "step"]).iloc[-1]
                rows.append((d, float(last["accuracy"]), str(last["expert"])))
                break
    return pd.DataFrame(rows, columns=["domain", "accuracy", "source"])


def break_gaps(series: pd.DataFrame, factor: float = 3.0) -> pd.DataFrame:
    """Insert a blank point where an expert's steps jump (e.g. `opd/kl`, reported in Phase II only), so
    a line chart shows a gap there instead of a straight line across Phase I."""
    if series.empty:
        return series
    parts = []
    for _, g in series.sort_values("step").groupby(["expert", "key"], dropna=False, sort=False):
        diffs = g["step"].diff()
        typical = diffs.median()
        jumps = g[diffs > factor * typical] if typical and typical > 0 else g.iloc[0:0]
        blanks = jumps.assign(step=jumps["step"] - 1, value=float("nan"))
        parts.append(pd.concat([g, blanks]).sort_values("step"))
    return pd.concat(parts, ignore_index=True)

"""Pure pandas: the API's tidy metric frames (expert, key, step, value[, cycle]) → the frames each view plots.

Points carry their cycle (the `cycle` column) when the worker that posted them knew it. Points of older
runs have none; for them an evaluation's cycle comes from order: the n-th `acc/*` point of an expert
(0-based) is cycle n, and the merged model, evaluated at the end, is aligned to the last cycle.
"""

from __future__ import annotations

import re
from typing import Iterable

import pandas as pd

from contract.metrics import ACC, OVERLAP_MEAN, OVERLAP_RL_MEAN, OVERLAP_TOP1_MEAN, OVERLAP_TOP1_RL_MEAN
from contract.vocab import MERGED, MIXED, STUDENT

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
    """Rows (expert, other, overlap) at `cycle`: key `<prefix><other>` of `expert` at its eval step (or, when
    the points carry their cycle, the point of that cycle: `overlap_rl/…` sits at the end of Phase I).

    Cells with no measurement (the diagonal, a missing point) are left out.
    """
    rows = []
    by_series = {(e, k): g for (e, k), g in overlap.groupby(["expert", "key"])} if not overlap.empty else {}
    for i in experts:
        step = steps.get((i, cycle))
        for j in experts:
            g = by_series.get((i, f"{prefix}{j}"))
            if i == j or g is None:
                continue
            if "cycle" in g and g["cycle"].notna().all():
                hit = g[g["cycle"] == cycle]
            elif step is None:
                continue
            else:
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


# ---- comparing strategies over seeds (the Compare page) -------------------------------------------

PHASE_LABELS = {0.5: "after Phase I", 0.0: "after Phase II"}
OVERLAP_PHASE_COLUMNS = ["cycle", "position", "after", "measure", "overlap"]


def overlap_phases(run_level: pd.DataFrame) -> pd.DataFrame:
    """Rows (cycle, position, after, measure, overlap) from the run-level overlap means: a cycle's
    `overlap_rl/…` (after its Phase I) at position c − 0.5, its `overlap/…` (after Phase II) at c."""
    keys = {OVERLAP_RL_MEAN.key: ("top-k", 0.5), OVERLAP_TOP1_RL_MEAN.key: ("top-1", 0.5),
            OVERLAP_MEAN.key: ("top-k", 0.0), OVERLAP_TOP1_MEAN.key: ("top-1", 0.0)}
    if run_level.empty:
        return pd.DataFrame(columns=OVERLAP_PHASE_COLUMNS)
    pts = run_level[run_level["key"].isin(keys) & run_level["expert"].isna()]
    rows = []
    for key, cycle, step, value in zip(pts["key"], pts.get("cycle", pts["step"]), pts["step"], pts["value"]):
        c = int(cycle) if pd.notna(cycle) else int(step)  # run-level overlap points have step = cycle
        measure, back = keys[key]
        rows.append((c, c - back, PHASE_LABELS[back], measure, float(value)))
    out = pd.DataFrame(rows, columns=OVERLAP_PHASE_COLUMNS)
    return out.drop_duplicates(["position", "measure"], keep="last").sort_values(["measure", "position"],
                                                                                 ignore_index=True)


def run_group(run: dict) -> str:
    """The strategy a run stands for in a comparison: its name without a `-s<seed>` ending (as `copd compare`
    names runs), else the strategy with what sets it apart (live teachers, a token budget)."""
    name, seed = str(run.get("name", "")), run.get("seed")
    if seed is not None and re.fullmatch(rf".+-s{int(seed)}", name):
        return name[: -len(f"-s{int(seed)}")]
    label = str(run.get("strategy", "?"))
    if label == "copd" and (run.get("opd") or {}).get("teacher_sync") == "step":
        label += " (live teachers)"
    if (run.get("mixed") or {}).get("train_tokens"):
        label += " (token-matched)"
    return label


def policy_accuracy(acc_cycles: pd.DataFrame, domains: Iterable[str]) -> pd.DataFrame:
    """Rows (domain, cycle, accuracy): per cycle, what the strategy trains on that domain — the one policy
    (`mixed`, `student`) where the cycle has it, else the expert that owns the domain. The merged model's
    final evaluation is left out (the final table shows it)."""
    rows = []
    for d in domains:
        on_d = acc_cycles[(acc_cycles["domain"] == d) & (acc_cycles["expert"] != MERGED)]
        for cycle, g in on_d.groupby("cycle"):
            single = g[g["expert"].isin([MIXED, STUDENT])]
            pick = single if not single.empty else g[g["expert"] == d]
            if not pick.empty:
                rows.append((d, int(cycle), float(pick["accuracy"].iloc[-1])))
    return pd.DataFrame(rows, columns=["domain", "cycle", "accuracy"])


def seed_band(frame: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Mean, sd (0 for one seed), lo = mean − sd, hi = mean + sd and n of `value` over the seeds of each group."""
    if frame.empty:
        return pd.DataFrame(columns=[*by, "mean", "sd", "lo", "hi", "n"])
    g = frame.groupby(by, sort=False)[value]
    out = pd.DataFrame({"mean": g.mean(), "sd": g.std(ddof=1).fillna(0.0), "n": g.count()}).reset_index()
    return out.assign(lo=out["mean"] - out["sd"], hi=out["mean"] + out["sd"])


def paired_differences(final_means: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Rows (group, mean, sd, n, seeds): each group's final mean accuracy minus the reference group's,
    paired by seed (seeds that both have), as docs/results reports; `final_means` has (group, seed, accuracy)."""
    ref = final_means[final_means["group"] == reference].groupby("seed")["accuracy"].mean()
    rows = []
    for group, g in final_means[final_means["group"] != reference].groupby("group", sort=False):
        mine = g.groupby("seed")["accuracy"].mean()
        seeds = sorted(set(mine.index) & set(ref.index))
        diffs = pd.Series([mine[s] - ref[s] for s in seeds], dtype=float)
        rows.append((group, float(diffs.mean()) if seeds else float("nan"),
                     float(diffs.std(ddof=1)) if len(seeds) > 1 else 0.0, len(seeds), ", ".join(map(str, seeds))))
    return pd.DataFrame(rows, columns=["group", "mean", "sd", "n", "seeds"])

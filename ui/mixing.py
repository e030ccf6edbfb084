"""The OPD mixing panel of the Run page: live knob values and history, and an editor that PATCHes changes.

A change is saved as a new knob version against the version the editor was loaded from
(`expected_version`); it shows as pending until a worker reports the cycle and step where it took effect.
If someone else saved a version in between, the API answers 409: the editor reloads and says so.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import pandas as pd
import streamlit as st

from ui.api import ApiError, Knobs, KnobVersion
from ui.common import LIVE_S, TERMINAL, client, compact, flash, fmt_time, show_error, show_flashes

SAME, PER_EXPERT = "same for all experts", "per expert"


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return not math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return a != b


def beta_changes(current: float | dict[str, float], mode: str, everyone: float, each: dict[str, float],
                 default: float) -> float | dict[str, float] | None:
    """The `beta` change the editor asks for, or None. A map is sent whole unless one is already set."""
    if mode == SAME:
        return everyone if isinstance(current, dict) or _differs(everyone, current) else None
    if isinstance(current, dict):  # a map merges into the current map: send only what changed
        changed = {e: v for e, v in each.items() if _differs(v, current.get(e, default))}
        return changed or None
    return dict(each) if any(_differs(v, current) for v in each.values()) else None


def weight_changes(current: dict[str, dict[str, float]], edited: pd.DataFrame) -> dict[str, dict[str, float]]:
    """student → teacher → weight for the cells that changed (blank cells are left as they are)."""
    out: dict[str, dict[str, float]] = {}
    for student, row in edited.iterrows():
        for teacher, value in row.items():
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            before = current.get(str(student), {}).get(str(teacher))
            if before is None or _differs(float(value), before):
                out.setdefault(str(student), {})[str(teacher)] = float(value)
    return out


def version_state(h: KnobVersion) -> str:
    if h.version == 0:
        return "from the spec"
    if h.applied is None:
        return "pending"
    return f"applied at cycle {h.applied.cycle}, step {h.applied.step}"


def _base_key(run_id: int) -> str:
    return f"knobs_base_{run_id}"


def load_base(run_id: int, knobs: Knobs | None = None) -> Knobs:
    """(Re)load what the editor edits; a new generation gives its widgets fresh keys, so they reset."""
    knobs = knobs or client().knobs(run_id)
    st.session_state[_base_key(run_id)] = knobs
    st.session_state[f"knobs_gen_{run_id}"] = st.session_state.get(f"knobs_gen_{run_id}", 0) + 1
    return knobs


def shown_values(values: dict[str, Any], experts: Sequence[str], spec_beta: float) -> dict[str, Any]:
    """The knob values as they act: a per-expert β map lists every expert (one it leaves out uses the
    spec's β, as the trainer does)."""
    beta = values.get("beta")
    if isinstance(beta, dict):
        values = {**values, "beta": {e: float(beta.get(e, spec_beta)) for e in experts}}
    return values


@st.fragment(run_every=LIVE_S)
def knob_status(run_id: int, experts: Sequence[str] = (), spec_beta: float = 1.0) -> None:
    """Current values, pending changes and the history; refreshed on its own."""
    try:
        knobs = client().knobs(run_id)
    except ApiError as err:
        show_error(err, "Could not read the knobs")
        return
    base: Knobs | None = st.session_state.get(_base_key(run_id))
    st.markdown(f"**Knobs at version {knobs.version}**")
    values = shown_values(knobs.values, experts, spec_beta)
    st.table(pd.DataFrame([{"knob": k, "value": compact(v)} for k, v in values.items()]), hide_index=True)
    for h in knobs.pending:
        st.warning(f"Version {h.version} is **pending** — {compact(h.changes)} (saved by {h.author} at "
                   f"{fmt_time(h.created_at)}); a worker applies it at its next step boundary.",
                   icon=":material/hourglass_top:")
    if base is not None and base.version != knobs.version:
        st.info(f"The knobs moved to version {knobs.version} since the editor loaded version {base.version}.")
    rows = [{"version": h.version, "change": compact(h.changes) or "—", "by": h.author,
             "saved": fmt_time(h.created_at), "state": version_state(h)} for h in reversed(knobs.history[-8:])]
    st.markdown("**History** (newest first)")
    st.table(pd.DataFrame(rows), hide_index=True)


def _field_errors(run_id: int, *fields: str, exact: bool = False) -> None:
    """The last 422's messages for these fields (and, unless `exact`, the fields under them)."""
    for f, msg in st.session_state.get(f"knobs_errors_{run_id}", {}).items():
        if any(f == x or (not exact and f.startswith(x + ".")) for x in fields):
            st.error(f"`{f}`: {msg}")


@st.fragment
def knob_editor(run_id: int, experts: Sequence[str], status: str, spec_beta: float) -> None:
    """Edit beta (global or per expert), steps, lr and teacher weights; Apply saves a new version."""
    show_flashes(f"mixing_{run_id}")
    if status in TERMINAL:
        st.info(f"This run is {status}: its knobs no longer change.")
        return
    try:
        base: Knobs = st.session_state.get(_base_key(run_id)) or load_base(run_id)
    except ApiError as err:
        show_error(err, "Could not read the knobs")
        return
    st.markdown(f"**Edit** (against version {base.version})")
    tag = f"{run_id}_{st.session_state.get(f'knobs_gen_{run_id}', 0)}"  # new keys after each (re)load
    changes = _edit_widgets(run_id, experts, base.values, spec_beta, tag)
    _field_errors(run_id, "changes", "expected_version", exact=True)
    st.caption(f"Changes: {compact(changes)}" if changes else "No changes yet.")
    b1, b2 = st.columns([1, 5])
    if b1.button("Apply", type="primary", key=f"kn_apply_{run_id}", disabled=not changes):
        apply(run_id, base, changes)
    if b2.button("Reload", key=f"kn_reload_{run_id}"):
        try:
            load_base(run_id)
        except ApiError as err:
            show_error(err)
            return
        st.rerun()


def _edit_widgets(run_id: int, experts: Sequence[str], v: dict[str, Any], spec_beta: float,
                  tag: str) -> dict[str, Any]:
    """The editor's inputs, filled with the loaded values `v`; returns what differs from them."""
    beta = v.get("beta", spec_beta)
    mode = st.radio("beta", [SAME, PER_EXPERT], index=int(isinstance(beta, dict)), horizontal=True,
                    key=f"kn_beta_mode_{tag}",
                    help="Scale of the OPD token advantage β·(log π_teacher − log π_student)")
    everyone, each = float(spec_beta if isinstance(beta, dict) else beta), {}
    if mode == SAME:
        everyone = st.number_input("beta (all experts)", min_value=0.0, value=everyone, step=0.05,
                                   format="%.4f", key=f"kn_beta_{tag}")
    else:
        cols = st.columns(min(len(experts), 4))
        for i, e in enumerate(experts):
            now = beta.get(e, spec_beta) if isinstance(beta, dict) else beta
            each[e] = cols[i % len(cols)].number_input(f"beta for {e}", min_value=0.0, value=float(now), step=0.05,
                                                        format="%.4f", key=f"kn_beta_{e}_{tag}")
    _field_errors(run_id, "changes.beta")
    c = st.columns(3)
    rl = c[0].number_input("rl_steps", min_value=0, value=int(v.get("rl_steps", 0)), step=1, key=f"kn_rl_{tag}",
                           help="Phase I steps for the coming cycles")
    opd = c[1].number_input("opd_steps", min_value=0, value=int(v.get("opd_steps", 0)), step=1, key=f"kn_opd_{tag}",
                            help="Phase II steps for the coming cycles")
    lr = c[2].number_input("lr", value=float(v.get("lr", 1e-4)), step=1e-6, format="%.2e", key=f"kn_lr_{tag}")
    _field_errors(run_id, "changes.rl_steps", "changes.opd_steps", "changes.lr")
    weights: dict[str, dict[str, float]] = v.get("teacher_weights") or {}
    grid = pd.DataFrame({t: [weights.get(s, {}).get(t) for s in experts] for t in experts}, index=list(experts),
                        dtype="float64")
    st.caption("Teacher weights: row = student, column = teacher (0 drops a teacher; blank = not a teacher).")
    edited = st.data_editor(grid, key=f"kn_weights_{tag}", column_config={
        t: st.column_config.NumberColumn(t, min_value=0.0, format="%.3f") for t in experts})
    _field_errors(run_id, "changes.teacher_weights")

    changes: dict[str, Any] = {}
    if (b := beta_changes(beta, mode, everyone, each, spec_beta)) is not None:
        changes["beta"] = b
    for knob, value in (("rl_steps", int(rl)), ("opd_steps", int(opd)), ("lr", float(lr))):
        if knob in v and _differs(value, v[knob]):
            changes[knob] = value
    if tw := weight_changes(weights, edited):
        changes["teacher_weights"] = tw
    return changes


def apply(run_id: int, base: Knobs, changes: dict[str, Any]) -> None:
    """PATCH against the loaded version; 409 reloads and tells the user, 422 marks the field."""
    scope = f"mixing_{run_id}"
    st.session_state.pop(f"knobs_errors_{run_id}", None)
    try:
        saved = client().change_knobs(run_id, expected_version=base.version, changes=changes)
    except ApiError as err:
        if err.status == 409:
            try:
                now = load_base(run_id)
                who = next((h.author for h in now.history if h.version == now.version), "")
                flash(scope, "warning", f"Not applied: the knobs changed meanwhile — they are now at version "
                                        f"{now.version}{f' (by {who})' if who else ''}, not {base.version}. The editor "
                                        f"shows the current values again; check them and Apply again. ({err.detail})")
            except ApiError as err2:
                flash(scope, "error", err2.message)
        elif err.status == 422:
            st.session_state[f"knobs_errors_{run_id}"] = err.field_errors() or {"changes": err.detail}
            flash(scope, "error", err.message)
        else:
            flash(scope, "error", err.message)
        st.rerun()
    load_base(run_id, saved)
    flash(scope, "success", f"Saved version {saved.version} ({compact(changes)}): pending until a worker applies it.")
    st.rerun()

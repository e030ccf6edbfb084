"""New run: a form for the run spec, or YAML pasted / uploaded; the API validates, errors sit by their field."""

from __future__ import annotations

from typing import Any

import streamlit as st
import yaml

from ui.api import ApiError
from ui.common import client, flash, vocab

JSONL = "jsonl file"
DEFAULT_EXPERTS = [("text", "builtin:arith"), ("image", "builtin:grid"), ("video", "builtin:frames")]
# The form starts from the example spec (examples/copd-tiny.yaml; tests/ui checks they agree).
DEFAULTS: dict[str, dict[str, float]] = {
    "schedule": {"cycles": 4, "rl_steps": 9, "opd_steps": 6},
    "grpo": {"group_size": 8, "prompts_per_step": 64, "lr": 1e-3, "temperature": 1.0, "max_new_tokens": 4,
             "eps_low": 0.2, "eps_high": 0.28, "kl_coef": 0.0},
    "opd": {"beta": 1.0, "prompts_per_step": 32, "samples_per_prompt": 4},
    "eval": {"prompts": 512},
}
EXAMPLE_YAML = f"""\
name: tiny-copd
base_model: builtin:tiny
strategy: copd
experts:
  - {{name: text,  domain: builtin:arith}}
  - {{name: image, domain: builtin:grid}}
  - {{name: video, domain: builtin:frames}}
topology: all_pairs
schedule: {{cycles: 4, rl_steps: 9, opd_steps: 6}}
grpo: {{group_size: 8, prompts_per_step: 64, lr: 1.0e-3, max_new_tokens: 4}}
opd: {{beta: 1.0, prompts_per_step: 32}}
eval: {{prompts: 512}}
seed: 0
"""
ERRORS = "new_run_errors"  # session key: field → message from the last refused spec


def field_error(*fields: str) -> None:
    """Show the API's message for these fields (or fields under them) right here, and mark them shown."""
    if st.session_state.get("new_run_source") != "form":
        return
    errors: dict[str, str] = st.session_state.get(ERRORS, {})
    shown = st.session_state.setdefault("_new_run_shown", set())
    for f, msg in errors.items():
        if any(f == x or f.startswith(x + ".") for x in fields):
            st.error(f"`{f}`: {msg}", icon=":material/error:")
            shown.add(f)


def submit(spec: dict[str, Any], start: bool, source: str) -> None:
    """POST the spec; on success open the new run, on a 422 keep the field messages for the next render."""
    api = client()
    st.session_state["new_run_source"] = source
    try:
        run = api.create_run(spec)
    except ApiError as err:
        st.session_state[ERRORS] = err.field_errors() if err.status == 422 else {}
        st.session_state["new_run_failure"] = err.message
        st.rerun()
    st.session_state.pop(ERRORS, None)
    st.session_state.pop("new_run_failure", None)
    flash("run", "success", f"Created run #{run['id']} ({run['name']}).")
    if start:
        try:
            api.act(run["id"], "start")
            flash("run", "info", "Started: the run is queued for the workers.")
        except ApiError as err:
            flash("run", "error", f"Created, but could not start it: {err.message}")
    st.switch_page("views/run.py", query_params={"run": str(run["id"])})


def expert_rows() -> list[dict[str, Any]]:
    words = vocab()
    domains, verifiers = [*words.builtin_domains, JSONL], words.verifiers
    n = int(st.number_input("Number of experts", min_value=1, max_value=32, value=3, key="nr_n_experts", width=220))
    field_error("experts")
    experts = []
    for i in range(n):
        name0, domain0 = DEFAULT_EXPERTS[i] if i < len(DEFAULT_EXPERTS) else (f"expert{i}", domains[i % 3])
        c = st.columns([2, 2, 3, 2])
        name = c[0].text_input(f"Expert {i + 1} name", name0, key=f"nr_expert_name_{i}")
        domain = c[1].selectbox(f"Expert {i + 1} domain", domains, domains.index(domain0) if domain0 in domains else 0,
                                key=f"nr_expert_domain_{i}")
        entry: dict[str, Any] = {"name": name.strip(), "domain": domain}
        if domain == JSONL:
            path = c[2].text_input("JSONL path", key=f"nr_expert_path_{i}", placeholder="data/mine.jsonl")
            verifier = c[3].selectbox("Verifier", verifiers, verifiers.index("numeric") if "numeric" in verifiers else 0,
                                      key=f"nr_expert_verifier_{i}")
            entry["domain"] = {"type": "jsonl", "path": path.strip(), "verifier": verifier}
        with st.container():
            field_error(f"experts.{i}")
        experts.append(entry)
    return experts


def form_spec() -> dict[str, Any]:
    """The run spec from the form's widgets (fields not shown keep the API's defaults)."""
    c = st.columns(4)
    name = c[0].text_input("Name", "tiny-copd", key="nr_name")
    with c[0]:
        field_error("name")
    base = c[1].text_input("Base model", "builtin:tiny", key="nr_base_model",
                           help="builtin:tiny, builtin:tiny-vl (with a vision tower), a local Hugging Face folder, or a hub id")
    with c[1]:
        field_error("base_model")
    strategies = {s.name: s.note for s in vocab().strategies}
    strategy = c[2].selectbox("Strategy", list(strategies), key="nr_strategy",
                              help="; ".join(f"{k}: {v}" for k, v in strategies.items()))
    with c[2]:
        field_error("strategy")
    seed = c[3].number_input("Seed", value=0, step=1, key="nr_seed")
    with c[3]:
        field_error("seed")

    st.subheader("Experts and their domains")
    experts = expert_rows()
    topologies = ["all_pairs"] + [f"hub:{e['name']}" for e in experts if e["name"]]
    topology = st.selectbox("Topology", topologies, key="nr_topology", width=320,
                            help="all_pairs: every expert teaches every other; hub:<expert>: hub-and-spoke")
    field_error("topology")

    st.subheader("Schedule")
    c = st.columns(3)
    schedule = {}
    sd = DEFAULTS["schedule"]
    for col, (knob, default, helptext) in zip(c, [("cycles", sd["cycles"], "Phase I + Phase II per cycle"),
                                                  ("rl_steps", sd["rl_steps"], "Phase I (RLVR) steps per cycle"),
                                                  ("opd_steps", sd["opd_steps"], "Phase II (mutual OPD) steps per cycle")]):
        schedule[knob] = int(col.number_input(knob, value=default, step=1, key=f"nr_schedule_{knob}", help=helptext))
        with col:
            field_error(f"schedule.{knob}")
    field_error("schedule")

    with st.expander("GRPO settings", expanded=bool(_errors_under("grpo"))):
        g = DEFAULTS["grpo"]
        grpo = _number_fields("grpo", [("group_size", g["group_size"], 1), ("prompts_per_step", g["prompts_per_step"], 1),
                                       ("lr", g["lr"], 1e-5), ("temperature", g["temperature"], 0.1),
                                       ("max_new_tokens", g["max_new_tokens"], 1), ("eps_low", g["eps_low"], 0.01),
                                       ("eps_high", g["eps_high"], 0.01), ("kl_coef", g["kl_coef"], 0.01)])
    with st.expander("OPD settings", expanded=bool(_errors_under("opd"))):
        o = DEFAULTS["opd"]
        opd = _number_fields("opd", [("beta", o["beta"], 0.1), ("prompts_per_step", o["prompts_per_step"], 1),
                                     ("samples_per_prompt", o["samples_per_prompt"], 1)])
        opd["teacher_sync"] = st.selectbox(
            "teachers (opd.teacher_sync)", ["phase", "step"], key="nr_opd_teacher_sync",
            help="phase: the peers as Phase I left them, one unit per expert; step: the peers' current weights "
                 "at every step, every expert in one lockstep unit (docs/trainer.md, Live teachers)")
    with st.expander("Evaluation", expanded=bool(_errors_under("eval"))):
        evaluation = _number_fields("eval", [("prompts", DEFAULTS["eval"]["prompts"], 1)])
    return {"name": name.strip(), "base_model": base.strip(), "strategy": strategy, "experts": experts,
            "topology": topology, "schedule": schedule, "grpo": grpo, "opd": opd, "eval": evaluation,
            "seed": int(seed)}


def _errors_under(prefix: str) -> list[str]:
    if st.session_state.get("new_run_source") != "form":
        return []
    return [f for f in st.session_state.get(ERRORS, {}) if f == prefix or f.startswith(prefix + ".")]


def _number_fields(section: str, fields: list[tuple[str, float, float]]) -> dict[str, Any]:
    """Number inputs in rows of four; ints stay ints. Bounds are the API's to check."""
    out: dict[str, Any] = {}
    for start in range(0, len(fields), 4):
        cols = st.columns(4)
        for col, (f, default, step) in zip(cols, fields[start:start + 4]):
            fmt = "%.2e" if f == "lr" else None
            v = col.number_input(f, value=default, step=step, format=fmt, key=f"nr_{section}_{f}")
            out[f] = int(v) if isinstance(default, int) else float(v)
            with col:
                field_error(f"{section}.{f}")
    field_error(section)
    return out


def yaml_spec() -> dict[str, Any] | None:
    """The spec from an uploaded file, else from the text box; a YAML error is shown and gives None."""
    upload = st.file_uploader("Upload a spec (YAML or JSON)", type=["yaml", "yml", "json"], key="nr_upload")
    text = st.text_area("…or paste it", EXAMPLE_YAML, height=320, key="nr_yaml")
    source = upload.getvalue().decode("utf-8", "replace") if upload is not None else text
    try:
        data = yaml.safe_load(source)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        st.error(f"Not valid YAML{at}: {getattr(err, 'problem', None) or err}")
        return None
    if not isinstance(data, dict):
        st.error("The spec must be a mapping of fields (name, experts, schedule, …).")
        return None
    return data


st.title("New run")
failure = st.session_state.get("new_run_failure")
summary = st.container()
st.session_state["_new_run_shown"] = set()
form_tab, yaml_tab = st.tabs(["Form", "YAML"])
with form_tab:
    spec = form_spec()
    c = st.columns([1, 1, 4])
    if c[0].button("Create run", type="primary", key="nr_create"):
        submit(spec, start=False, source="form")
    if c[1].button("Create and start", key="nr_create_start"):
        submit(spec, start=True, source="form")
with yaml_tab:
    data = yaml_spec()
    if st.button("Create from YAML", type="primary", key="nr_create_yaml", disabled=data is None):
        submit(data or {}, start=False, source="yaml")
    if st.session_state.get("new_run_source") == "yaml" and st.session_state.get(ERRORS):
        st.table([{"field": f, "problem": m} for f, m in st.session_state[ERRORS].items()])
with summary:
    if failure:
        unplaced = {f: m for f, m in st.session_state.get(ERRORS, {}).items()
                    if f not in st.session_state["_new_run_shown"]}
        if st.session_state.get("new_run_source") == "yaml":
            unplaced = {}  # listed in the YAML tab
        st.error(f"The API refused the spec. {failure}" if st.session_state.get(ERRORS) else failure,
                 icon=":material/error:")
        for f, m in unplaced.items():
            st.error(f"`{f}`: {m}")

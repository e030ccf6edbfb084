"""New run page (AppTest against the real API): create from the form or YAML; the API's 422s by their field."""

from __future__ import annotations

import pytest

from tests.ui.conftest import ApiProcess, button, no_traceback, open_page, shown


def run_named(api: ApiProcess, name: str) -> list[dict]:
    with api.http() as http:
        return [r for r in http.get("/runs", params={"limit": 500}).json()["items"] if r["name"] == name]


def test_create_from_the_form_opens_the_new_run(ui_env: ApiProcess) -> None:
    at = open_page("new_run")
    no_traceback(at)
    at.text_input(key="nr_name").input("ui-form-run")
    at.selectbox(key="nr_topology").set_value("hub:text")
    at.number_input(key="nr_schedule_cycles").set_value(3)
    at.number_input(key="nr_opd_beta").set_value(0.5)
    assert at.selectbox(key="nr_opd_teacher_sync").value == "phase"  # the spec's default
    at.selectbox(key="nr_opd_teacher_sync").set_value("step")
    button(at, "Create run").click().run()
    no_traceback(at)
    [run] = run_named(ui_env, "ui-form-run")
    assert run["opd"]["teacher_sync"] == "step"
    assert at.query_params["run"] == str(run["id"])
    assert at.title[0].value == "ui-form-run"
    assert f"Created run #{run['id']}" in shown(at, "success")
    assert run["status"] == "draft" and run["topology"] == "hub:text"
    assert run["schedule"]["cycles"] == 3 and run["opd"]["beta"] == 0.5
    assert [e["name"] for e in run["experts"]] == ["text", "image", "video"]


def test_create_and_start(ui_env: ApiProcess) -> None:
    at = open_page("new_run")
    at.text_input(key="nr_name").input("ui-started-run")
    at.number_input(key="nr_n_experts").set_value(2).run()
    button(at, "Create and start").click().run()
    no_traceback(at)
    [run] = run_named(ui_env, "ui-started-run")
    assert run["status"] == "queued" and len(run["experts"]) == 2


def test_api_validation_is_shown_next_to_the_field(ui_env: ApiProcess) -> None:
    at = open_page("new_run")
    at.text_input(key="nr_expert_name_1").input("bad name!")
    at.number_input(key="nr_grpo_lr").set_value(0.0)
    at.text_input(key="nr_name").input("ui-invalid-run")
    button(at, "Create run").click().run()
    no_traceback(at)
    assert run_named(ui_env, "ui-invalid-run") == []
    assert at.title[0].value == "New run"  # stayed on the form
    errors = [e.value for e in at.error]
    assert any("The API refused the spec" in e and "Invalid (422)" in e for e in errors)
    assert any(e.startswith("`experts.1.name`") for e in errors)
    assert any(e.startswith("`grpo.lr`") for e in errors)
    # Each message sits in the form right after its widget, not only in the summary at the top.
    form = at.tabs[0]
    assert any(e.value.startswith("`experts.1.name`") for e in form.error)
    assert any(e.value.startswith("`grpo.lr`") for e in form.error)


def test_copd_needs_two_experts(ui_env: ApiProcess) -> None:
    at = open_page("new_run")
    at.number_input(key="nr_n_experts").set_value(1).run()
    button(at, "Create run").click().run()
    no_traceback(at)
    assert "needs at least 2 experts" in shown(at, "error")


def test_create_from_yaml(ui_env: ApiProcess) -> None:
    at = open_page("new_run")
    at.text_area(key="nr_yaml").input(
        "name: ui-yaml-run\nstrategy: independent\nexperts:\n  - {name: a, domain: builtin:arith}\n"
        "  - {name: b, domain: builtin:grid}\nschedule: {cycles: 1, rl_steps: 2, opd_steps: 1}\n")
    button(at, "Create from YAML").click().run()
    no_traceback(at)
    [run] = run_named(ui_env, "ui-yaml-run")
    assert at.title[0].value == "ui-yaml-run" and run["strategy"] == "independent"


def test_create_from_an_uploaded_file(ui_env: ApiProcess) -> None:
    at = open_page("new_run")
    spec = b'{"name": "ui-uploaded-run", "experts": [{"name": "a", "domain": "builtin:arith"}, ' \
           b'{"name": "b", "domain": "builtin:frames"}], "topology": "hub:a"}'
    at.file_uploader(key="nr_upload").set_value(("spec.json", spec, "application/json")).run()
    button(at, "Create from YAML").click().run()
    no_traceback(at)
    [run] = run_named(ui_env, "ui-uploaded-run")
    assert at.title[0].value == "ui-uploaded-run" and run["topology"] == "hub:a"


@pytest.mark.parametrize("text, expected", [
    ("name: [unclosed\n", "Not valid YAML (line"),
    ("- just\n- a list\n", "must be a mapping"),
])
def test_unreadable_yaml_is_a_message(ui_env: ApiProcess, text: str, expected: str) -> None:
    at = open_page("new_run")
    at.text_area(key="nr_yaml").input(text).run()
    no_traceback(at)
    assert expected in shown(at, "error")


def test_yaml_refused_by_the_api_lists_fields(ui_env: ApiProcess) -> None:
    at = open_page("new_run")
    at.text_area(key="nr_yaml").input(
        "name: ui-yaml-bad\nexperts:\n  - {name: a, domain: builtin:nope}\n  - {name: b, domain: builtin:grid}\n"
        "schedule: {cycles: -1}\nsurprise: 1\n")
    button(at, "Create from YAML").click().run()
    no_traceback(at)
    assert run_named(ui_env, "ui-yaml-bad") == []
    [problems] = at.tabs[1].table
    fields = set(problems.value["field"])
    assert {"experts.0.domain", "schedule.cycles", "surprise"} <= fields


def test_the_form_offers_what_the_api_knows(ui_env: ApiProcess) -> None:
    with ui_env.http() as http:
        vocab = http.get("/vocab").json()
    at = open_page("new_run")
    no_traceback(at)
    assert list(at.selectbox(key="nr_expert_domain_0").options) == [*vocab["builtin_domains"], "jsonl file"]
    assert len(vocab["builtin_domains"]) == 14  # 12 text, 2 visual
    assert list(at.selectbox(key="nr_strategy").options) == [s["name"] for s in vocab["strategies"]]


def test_the_form_starts_from_the_example_spec() -> None:
    from pathlib import Path

    import yaml

    from ui.views.new_run import DEFAULTS, EXAMPLE_YAML

    from contract.spec import load_spec

    example = load_spec(Path(__file__).parents[2] / "examples" / "copd-tiny.yaml").model_dump()  # defaults filled
    pasted = yaml.safe_load(EXAMPLE_YAML)
    for section, values in DEFAULTS.items():
        for knob, value in values.items():
            assert example[section][knob] == value, f"{section}.{knob}"
            if knob in pasted.get(section, {}):
                assert pasted[section][knob] == value, f"YAML {section}.{knob}"
    assert [e["domain"] for e in pasted["experts"]] == [e["domain"] for e in example["experts"]]

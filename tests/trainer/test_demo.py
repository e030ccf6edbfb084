"""The main job, shortened: from the shipped base model every CoPD expert gains on its own domain by more
than the evaluation's noise, and `copd train` ends with the accuracy table (issue 14)."""

import json
import math
from pathlib import Path

import pytest

from copd.summary import accuracy_table, format_table, run_summary
from trainer.domains import load_domain
from trainer.local import train_local
from trainer.models import SHIPPED_BASE, shipped_base, warmstart_code_hash
from trainer.spec import load_spec

EXAMPLE = Path(__file__).parents[2] / "examples" / "copd-tiny.yaml"


def test_the_example_uses_the_shipped_base_model():
    spec = load_spec(EXAMPLE)
    domains = [load_domain(e.domain, spec.seed) for e in spec.experts]
    assert spec.base_model == "builtin:tiny" and shipped_base(spec.tiny, domains) is not None
    # another recipe, or a domain it was not built on, warm-starts instead
    assert shipped_base(spec.tiny.model_copy(update={"layers": 2}), domains) is None
    assert shipped_base(spec.tiny, [*domains, load_domain("builtin:marked_sum", 0)]) is None
    assert shipped_base(spec.tiny.model_copy(update={"seed": 1}), domains) is None  # another base seed


def test_the_shipped_base_was_built_by_this_code():
    """A changed domain generator, habit or warm start makes the shipped base stale: rebuild it with
    `python scripts/build-tiny-base.py` (a run would otherwise warm-start its own, for minutes)."""
    meta = json.loads((SHIPPED_BASE / "warmstart.json").read_text())
    assert meta["code"] == warmstart_code_hash(list(meta["sampled_accuracy"])), "run scripts/build-tiny-base.py"


@pytest.fixture(scope="module")
def short_demo(tmp_path_factory):
    """The example spec cut to its first cycle (9 RLVR + 6 mutual-OPD steps per expert), 256 eval prompts."""
    from trainer.spec import parse_spec

    data = load_spec(EXAMPLE).model_dump()
    data["schedule"]["cycles"] = 1
    data["eval"]["prompts"] = 256
    spec = parse_spec(data)
    out = tmp_path_factory.mktemp("demo") / "run"
    train_local(spec, out, tmp_path_factory.mktemp("models"), log_fn=lambda m: None)
    return spec, out


@pytest.mark.slow
@pytest.mark.parametrize("expert", ["text", "image", "video"])
def test_shortened_demo_expert_gains_on_its_own_domain(short_demo, expert):
    spec, out = short_demo
    domains, rows = accuracy_table(out / "metrics.jsonl")
    assert domains == spec.expert_names and list(rows) == ["base", *spec.expert_names, "merged"]
    n = spec.eval.prompts
    before, after = rows["base"][expert], rows[expert][expert]
    # standard error of the difference of two accuracies on n prompts each
    se = math.sqrt((before * (1 - before) + after * (1 - after)) / n)
    assert after - before > 3 * max(se, 0.5 / n), (expert, before, after, se)


@pytest.mark.slow
def test_shortened_demo_summary_names_the_files(short_demo):
    spec, out = short_demo
    text = run_summary(out, spec.eval.prompts)
    assert "merged" in text and str(out / "metrics.jsonl") in text and str(out / "final") in text
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["cycle"] == 0


def test_format_table_marks_the_own_domain_and_the_mean():
    rows = {"base": {"a": 0.25, "b": 0.5}, "a": {"a": 0.75, "b": 0.5}, "merged": {"a": 0.5, "b": 0.5}}
    text = format_table(["a", "b"], rows, 256)
    lines = text.splitlines()
    assert lines[0].split() == ["a", "b", "mean"]
    assert lines[2].split() == ["base", "0.250", "0.500", "0.375"]
    assert lines[3].split() == ["a", "0.750*", "0.500", "0.625"]
    assert "±0.031" in lines[-1]

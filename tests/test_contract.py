"""The shared floor: one vocabulary that agrees with itself, one metric registry, and imports that only run down."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from contract import metrics as M
from contract import vocab as V
from contract.plan import SHAPES, Unit, plan
from contract.spec import Knobs, merge_knobs, parse_spec

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("contract", "integrations", "trainer", "worker", "server", "ui", "copd")
# Who may import whom (the one-way arrows of docs/architecture.md). copd/ is the roof: the CLI over all.
ALLOWED = {
    "contract": set(),
    "integrations": {"contract"},
    "trainer": {"contract", "integrations"},
    "worker": {"contract", "trainer"},
    "server": {"contract", "integrations"},
    "ui": {"contract"},
    "copd": {"contract", "integrations", "trainer", "worker", "server", "ui"},
}
# Old import paths kept for one release (docs/design-notes.md): thin re-exports, exempt from the arrows.
SHIMS = {"copd/settings.py", "copd/client.py", "copd/fsbroker.py", "trainer/spec.py", "trainer/schedule.py",
         "trainer/domains/names.py"}


# ---- the vocabulary

def test_status_sets_agree_with_the_lifecycle_table() -> None:
    statuses = set(V.STATUSES)
    moves = [*V.ACTIONS.values(), *V.WORKER_REPORTS.values(), V.CRASH]
    assert all(t.to in statuses and t.allowed_from <= statuses for t in moves)
    ways_out = {s for t in moves for s in t.allowed_from}
    assert V.TERMINAL == statuses - ways_out           # over: nothing moves it any more
    assert V.ACTIVE == V.WORKER_REPORTS[V.FAILED].allowed_from  # a unit may be in flight: a worker can fail it
    assert V.RUNNABLE == V.ACTIONS["pause"].allowed_from        # a new unit may start: what pause stops
    assert V.CRASH.allowed_from == {V.RUNNING} and V.ACTIONS["resume"].allowed_from == {V.PAUSED, V.CRASHED}
    assert V.REPORTING == V.ACTIVE and V.WATCH_STOP == V.TERMINAL | {V.CRASHED}
    assert set(V.ACTIONS) == set(V.Action.__args__)  # type: ignore[attr-defined]


def test_strategies_domains_and_verifiers_are_defined_once() -> None:
    from trainer.domains import BUILTINS
    from trainer.domains.verifiers import VERIFIERS as SCORERS

    assert tuple(SHAPES) == V.STRATEGIES and set(V.STRATEGY_NOTES) == set(V.STRATEGIES)
    assert tuple(BUILTINS) == V.BUILTIN_DOMAINS
    assert set(SCORERS) == set(V.VERIFIERS)


def test_one_unit_id_format() -> None:
    base = {"name": "r", "experts": [{"name": "a", "domain": "builtin:arith"}, {"name": "b", "domain": "builtin:grid"}],
            "schedule": {"cycles": 2, "rl_steps": 1, "opd_steps": 1}}
    for strategy in V.STRATEGIES:
        for unit in plan(parse_spec({**base, "strategy": strategy})):
            assert re.match(V.UNIT_ID_RE, unit.id) and Unit.parse(unit.id).id == unit.id
    assert V.unit_id(3, "opd", "b") == "c3/opd/b" and V.parse_unit_id("c3/opd/b") == (3, "opd", "b")
    for older in ("c2/merge/merged", "c1/eval/all"):  # what workers of the previous release send
        assert re.match(V.UNIT_ID_RE, older)
    with pytest.raises(ValueError):
        V.parse_unit_id("c1/rl/text/extra")


# ---- the metric registry

def test_registry_lookup_patterns_and_reductions() -> None:
    assert M.lookup("overlap/mean") is M.OVERLAP_MEAN and M.lookup("overlap/text") is M.OVERLAP
    assert M.lookup("opd/kl") is M.OPD_KL and M.lookup("opd/kl/image") is M.OPD_KL_TEACHER
    assert M.ACC.key_for("video") == "acc/video" and M.ACC.name_in("acc/video") == "video"
    assert M.ACC.name_in("acc_mean") is None and M.lookup("acc_mean") is M.ACC_MEAN
    assert M.lookup("no/such/key") is None
    assert M.reduce("cost/train_tokens", [3, 4]) == 7 and M.reduce("tokens/rollout_per_s", [1.5, 2]) == 3.5
    assert M.reduce("memory/peak_gb", [1.0, 3.0, 2.0]) == 3.0 and M.reduce("loss/grpo", [1.0, 2.0]) == 1.5
    assert M.reduce("undeclared", [1.0, 3.0]) == 2.0
    assert len({d.key for d in M.REGISTRY}) == len(M.REGISTRY)


def test_docs_list_every_metric_key() -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text()
    rows = set(re.findall(r"^\| `([^`]+)` \|", doc, re.M))
    assert rows == {d.key for d in M.REGISTRY}


# ---- knobs: one merge rule, typed

def test_knobs_one_merge_rule_and_typed_reads() -> None:
    spec = parse_spec({"name": "r", "experts": [{"name": n, "domain": "builtin:arith"} for n in ("a", "b", "c")],
                       "opd": {"beta": 0.5}, "schedule": {"rl_steps": 4, "opd_steps": 2}})
    k0 = Knobs.from_spec(spec)
    assert (k0.beta_for("a", spec.opd.beta), k0.steps("rl"), k0.steps("opd")) == (0.5, 4, 2)
    assert k0.teachers(spec, "a") == {"b": 0.5, "c": 0.5}
    k1 = k0.merged({"teacher_weights": {"a": {"b": 3.0}}, "beta": {"b": 2.0}})
    assert k1.teachers(spec, "a") == {"b": 0.75, "c": 0.25}  # c kept its weight: per student and teacher
    assert k1.beta_for("b", spec.opd.beta) == 2.0 and k1.beta_for("a", spec.opd.beta) == 0.5
    assert k1.merged({"beta": 1.0}).beta == 1.0  # a number replaces a map
    assert merge_knobs(k0.model_dump(), {"lr": 1e-3})["lr"] == 1e-3
    assert Knobs.coerce({"lr": 2e-4}, spec).steps("rl") == 4  # what a partial mapping leaves out: the spec's


def test_local_knobs_file_merges_like_the_api(tmp_path) -> None:
    import json

    from trainer.reporter import JsonlReporter

    spec = parse_spec({"name": "r", "experts": [{"name": n, "domain": "builtin:arith"} for n in ("a", "b", "c")]})
    rep = JsonlReporter(tmp_path, Knobs.from_spec(spec))
    (tmp_path / "knobs.json").write_text(json.dumps({"teacher_weights": {"a": {"b": 0.0}}}))
    version, knobs = rep.knobs()
    assert version == 1 and knobs.teacher_weights["a"] == {"b": 0.0, "c": 1.0}
    assert knobs.teachers(spec, "a") == {"c": 1.0}
    (tmp_path / "knobs.json").write_text(json.dumps({"lr": -1}))
    import os
    os.utime(tmp_path / "knobs.json", (1, 1))  # a new mtime for sure
    assert rep.knobs()[0] == 1  # invalid values: knobs unchanged, and an event says why
    rep.close()
    assert "invalid knobs" in (tmp_path / "events.jsonl").read_text()


# ---- imports run one way

def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}  # `from pkg import module`
    return out


def _modules() -> dict[str, Path]:
    mods = {}
    for part in PARTS:
        for path in (ROOT / part).rglob("*.py"):
            rel = path.relative_to(ROOT)
            name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
            mods[name] = path
    return mods


def test_imports_only_run_down_and_never_in_a_circle() -> None:
    mods = _modules()
    wrong = []
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        rel = str(path.relative_to(ROOT))
        part = name.split(".")[0]
        for imp in _imports(path):
            top = imp.split(".")[0]
            if top in PARTS and top != part and top not in ALLOWED[part] and rel not in SHIMS:
                wrong.append(f"{rel} imports {imp}")
            if imp in mods and imp != name:
                graph[name].add(imp)
    assert not wrong, "imports against the arrows:\n" + "\n".join(sorted(wrong))
    # no circle between modules (Tarjan-free: a DFS with colours)
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        colour[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if colour.get(m) == 1:
                raise AssertionError("import circle: " + " → ".join(stack[stack.index(m):] + [m]))
            if m not in colour:
                visit(m)
        stack.pop()
        colour[n] = 2

    for n in sorted(mods):
        if n not in colour:
            visit(n)


def test_contract_imports_no_heavy_framework() -> None:
    code = ("import sys, contract.vocab, contract.metrics, contract.spec, contract.plan, contract.schemas, "
            "contract.settings, contract.broker, contract.client; "
            "heavy = [m for m in ('torch', 'fastapi', 'sqlalchemy', 'streamlit', 'celery', 'transformers', "
            "'trainer', 'server', 'worker', 'ui', 'copd') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_integrations_import_no_torch() -> None:
    """The exporter and alerts run in the API (which never imports torch): neither they nor the trackers'
    writers may pull torch in."""
    code = ("import sys, integrations.runs, integrations.local, integrations.alerts; "
            "heavy = [m for m in ('torch', 'trainer', 'server', 'worker', 'ui', 'copd', 'wandb', 'mlflow') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr

"""`copd train` exports too: the same exporter, fed by the JSON-lines reporter; alerts on completion."""

from __future__ import annotations

import json
import math

import pytest

from contract.settings import get_settings
from tests.integrations.readers import mlflow_points, tensorboard_points, wandb_points
from tests.trainer.conftest import tiny_spec
from trainer.local import train_local


@pytest.fixture
def clean_settings(monkeypatch):
    for var in ("COPD_REPORT_TO", "COPD_ALERT_WEBHOOKS", "COPD_MLFLOW_TRACKING_URI", "COPD_TENSORBOARD_DIR"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.slow
def test_local_run_exports_every_point_once_and_alerts(tmp_path, model_cache, receiver, wandb_offline, clean_settings):
    out = tmp_path / "run"
    spec = tiny_spec(schedule={"cycles": 1, "rl_steps": 1, "opd_steps": 1},
                     report_to=["wandb", "mlflow", "tensorboard"],
                     alerts={"webhooks": [receiver.url], "rules": ["acc_mean > -1.0", "acc_mean < 2.0"]})
    train_local(spec, out, model_cache, log_fn=lambda m: None)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    want = {(f"{r['expert'] or 'run'}/{r['key']}", r["step"]): r["value"] for r in rows}
    assert len(want) == len(rows) > 20  # (expert, key, step) is unique in the run's own file too

    def same(counter, rel=1e-12):
        """Every point once, at its step, with its value (TensorBoard stores float32: rel 1e-6)."""
        assert all(n == 1 for n in counter.values()), [k for k, n in counter.items() if n > 1]
        got = {(k, s): v for k, s, v in counter}
        assert set(got) == set(want), sorted(set(got) ^ set(want))[:5]
        return all(math.isclose(got[k], want[k], rel_tol=rel, abs_tol=1e-9) for k in want)

    wb, config = wandb_points(out / "wandb")
    assert same(wb) and config["name"] == "test-copd" and config["report_to"] == ["wandb", "mlflow", "tensorboard"]
    ml, tags, params = mlflow_points(f"sqlite:///{out / 'mlflow.db'}")
    assert same(ml) and params["_status"] == "FINISHED" and tags["copd.link"] == str(out.resolve())
    runs = [d for d in (out / "tensorboard").iterdir()]
    assert len(runs) == 1
    tb, texts = tensorboard_points(runs[0])
    assert same(tb, rel=1e-6) and any("merged model (average)" in t for t in texts)
    texts = receiver.wait_for(3)
    assert sum("completed" in t for t in texts) == 1 and sum("rule acc_mean" in t for t in texts) == 2, texts


def test_a_knobs_json_change_reaches_the_sink(tmp_path):
    from trainer.reporter import JsonlReporter

    class Recorder:
        def __init__(self):
            self.knob_versions, self.events, self.points = [], [], []

        def metrics(self, expert, cycle, step, values):
            self.points.append((expert, cycle, step, values))

        def event(self, message, *, level="info", expert=None):
            self.events.append(message)

        def knobs(self, version, changes):
            self.knob_versions.append((version, changes))

    sink = Recorder()
    rep = JsonlReporter(tmp_path, {"beta": 1.0}, sink=sink)
    rep.metrics("text", 1, 3, {"loss/grpo": 0.5})
    (tmp_path / "knobs.json").write_text(json.dumps({"beta": 0.25}))
    version, knobs = rep.knobs()
    rep.knobs_applied(version, 1, 4)
    rep.close()
    assert version == 1 and knobs.beta == 0.25
    assert sink.knob_versions == [(1, {"beta": 0.25})] and sink.points == [("text", 1, 3, {"loss/grpo": 0.5})]
    assert sink.events == ["knobs version 1 applied at cycle 1, step 4"]

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
                     alerts={"webhooks": [receiver.url], "rules": ["acc_mean > 0.0", "acc_mean < 2.0"]})
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

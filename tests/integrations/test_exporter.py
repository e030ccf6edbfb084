"""The exporter against the real trackers, read back with each library's own reader: every point once."""

from __future__ import annotations

import time

import pytest

from integrations.exporter import RunExporter
from integrations.trackers import Point, RunInfo, TrackerConfig, make_tracker
from tests.integrations.readers import mlflow_points, tensorboard_points, wandb_points

INFO = RunInfo("run-7", "tiny-copd", {"name": "tiny-copd", "schedule": {"cycles": 2}}, "http://dash/run?run=7")


def _points(n: int = 5) -> list[Point]:
    pts = [Point(e, "loss/grpo", s, 0.1 * s + (e == "image"), 1.7e9 + s, 1) for e in ("text", "image") for s in range(1, n + 1)]
    return pts + [Point(None, "overlap/mean", 1, 0.875, 1.7e9, 1), Point("merged", "acc_mean", 9, 0.5, 1.7e9, 2)]


def _want(points):
    return {(p.series, p.step, round(p.value, 5)) for p in points}


def _got(counter):
    assert all(n == 1 for n in counter.values()), [k for k, n in counter.items() if n > 1]
    return {(k, s, round(v, 5)) for k, s, v in counter}


def test_every_point_once_in_every_tracker(tmp_path, wandb_offline):
    cfg = TrackerConfig(wandb_dir=tmp_path, mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                        mlflow_artifacts=(tmp_path / "artifacts").as_uri(), tensorboard_dir=tmp_path / "tb")
    ex = RunExporter(INFO, [make_tracker(n, cfg) for n in ("wandb", "mlflow", "tensorboard")], tmp_path / "state")
    pts = _points()
    assert ex.add_points(pts[:4]) == 4
    assert ex.add_points(pts) == len(pts) - 4          # the first four again: not exported twice
    ex.add_event("c1/rl/text: 3 steps from base")
    ex.add_knobs(1, {"beta": 0.5})
    assert ex.close("completed") == 0
    wb, config = wandb_points(tmp_path / "wandb")
    assert _got(wb) == _want(pts) and config["schedule"] == {"cycles": 2} and config["knobs/v1"] == {"beta": 0.5}
    ml, tags, params = mlflow_points(cfg.mlflow_tracking_uri)
    assert _got(ml) == _want(pts)
    assert tags["copd.link"] == INFO.link and tags["knobs/v1"] == '{"beta": 0.5}' and params["_status"] == "FINISHED"
    assert tags["event/00001"] == "c1/rl/text: 3 steps from base" and params["schedule"] == '{"cycles": 2}'
    assert len(list((tmp_path / "artifacts").rglob("spec.json"))) == 1   # the spec, as an artifact
    tb, texts = tensorboard_points(tmp_path / "tb" / "run-7")
    assert _got(tb) == _want(pts)
    assert "events: c1/rl/text: 3 steps from base" in texts and 'knobs: v1: {"beta": 0.5}' in texts
    assert any(t.startswith("link: http://dash") for t in texts)


def test_a_tracker_that_is_down_buffers_retries_and_reports_the_gap(tmp_path):
    store = tmp_path / "blocked"                        # a file where MLflow's SQLite folder should be: it fails
    store.write_text("not a folder")
    cfg = TrackerConfig(mlflow_tracking_uri=f"sqlite:///{store / 'mlflow.db'}", tensorboard_dir=tmp_path / "tb",
                        mlflow_artifacts=(tmp_path / "artifacts").as_uri())
    heard: list[tuple[str, str]] = []
    ex = RunExporter(INFO, [make_tracker("mlflow", cfg), make_tracker("tensorboard", cfg)], tmp_path / "state",
                     report=lambda level, msg: (heard.append((level, msg)), ex.add_event(msg)))
    pts = _points()
    ex.add_points(pts[:6])
    ex.pump()
    assert [lvl for lvl, _ in heard] == ["warning"] and "tracker mlflow unreachable" in heard[0][1]
    assert ex.pending() == 1                             # TensorBoard has everything; MLflow waits
    ex.add_points(pts[6:])
    ex.pump()                                            # not due yet (backoff): no second warning
    assert len(heard) == 1
    store.unlink()
    ex.pump(now=time.time() + 3600)                      # past the backoff: retried, delivered
    assert heard[-1][0] == "info" and "tracker mlflow is back" in heard[-1][1] and "none lost" in heard[-1][1]
    assert ex.close("completed") == 0
    ml, tags, _ = mlflow_points(cfg.mlflow_tracking_uri)
    assert _got(ml) == _want(pts)
    assert any("unreachable" in v for k, v in tags.items() if k.startswith("event/"))   # the gap, as events
    assert any("is back" in v for k, v in tags.items() if k.startswith("event/"))
    tb, _ = tensorboard_points(tmp_path / "tb" / "run-7")
    assert _got(tb) == _want(pts)


def test_what_was_not_delivered_waits_in_the_outbox_for_the_next_open(tmp_path):
    store = tmp_path / "later"
    store.write_text("not a folder")
    cfg = TrackerConfig(mlflow_tracking_uri=f"sqlite:///{store / 'mlflow.db'}",
                        mlflow_artifacts=(tmp_path / "artifacts").as_uri())
    heard = []
    ex = RunExporter(INFO, [make_tracker("mlflow", cfg)], tmp_path / "state", report=lambda l, m: heard.append(m))
    pts = _points()
    ex.add_points(pts)
    assert ex.close("completed", wait_s=0.2) == 1
    assert "stay in" in heard[-1]
    store.unlink()
    again = RunExporter(INFO, [make_tracker("mlflow", cfg)], tmp_path / "state")
    assert again.add_points(pts) == 0                    # the outbox remembers what was queued
    assert again.close("completed") == 0
    ml, _, _ = mlflow_points(cfg.mlflow_tracking_uri)
    assert _got(ml) == _want(pts)

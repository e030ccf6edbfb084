"""Workers that stop mid-unit: Ctrl-C (the unit goes back to the queue), SIGKILL (the run is resumed), and a
cancelled run. The metrics must equal an uninterrupted run's: nothing missing, nothing doubled."""

from __future__ import annotations

import signal
import time

import pytest
import yaml

from tests.worker.checks import TIMING, api_points, check_completed_run, jsonl_points
from tests.worker.conftest import tiny_spec

pytestmark = pytest.mark.slow

# Short heartbeat timeout so the reaper notices the killed worker quickly; a pause after every step but a
# unit's last, so the test can stop a worker between two steps of one unit.
CRASH_ENV = {"COPD_HEARTBEAT_TIMEOUT_S": "10", "COPD_REAPER_INTERVAL_S": "1", "COPD_HEARTBEAT_INTERVAL_S": "1",
             "COPD_STEP_DELAY_S": "1"}


def _mid_unit(api, run_id: int, phase: str, first_step: int):
    """The expert whose `phase` unit has finished its first step (step `first_step`) but not its last."""
    def find():
        for e in api.get_run(run_id).experts:
            if e.status == "running" and e.unit and e.unit.startswith(f"c1/{phase}/"):
                series = api.get_metrics(run_id, key="loss/grpo", expert=e.name).series
                if series and series[0].points[-1].step == first_step:
                    return e.name
        return None
    return find


def test_stopped_and_killed_workers_lose_and_double_nothing(make_stack, tmp_path):
    stack = make_stack(env=CRASH_ENV)
    spec = tiny_spec(name="worker-crash", schedule={"opd_steps": 2})
    stack.start_api()
    workers = [stack.start_worker("w1")]
    with stack.client() as api:
        run_id = api.create_run(spec).id
        api.start(run_id)
        root = stack.data_dir / "runs" / str(run_id)

        # Ctrl-C (SIGTERM) during Phase I: the worker stops at the next step boundary and requeues the unit.
        expert = stack.wait(_mid_unit(api, run_id, "rl", 1), 180, "a Phase I unit between its two steps", every=0.1)
        workers[0].send_signal(signal.SIGTERM)
        assert workers[0].wait(30) == 0, stack.tails()
        assert not (root / "units" / f"c1_rl_{expert}.done").exists()
        workers.append(stack.start_worker("w2"))  # picks the requeued unit up; no resume needed

        # SIGKILL during Phase II: the unit's message is lost with the process; the reaper marks the run
        # crashed, a new worker starts, and resume re-dispatches what is not done.
        expert = stack.wait(_mid_unit(api, run_id, "opd", 3), 180, "a Phase II unit between its two steps", every=0.1)
        workers[1].send_signal(signal.SIGKILL)
        workers[1].wait(10)
        assert not (root / "units" / f"c1_opd_{expert}.done").exists()
        workers.append(stack.start_worker("w3"))
        stack.wait_status(api, run_id, {"crashed"}, 90)
        assert api.resume(run_id).status == "queued"
        stack.wait_status(api, run_id, {"completed"}, 240)

        got = check_completed_run(api, run_id, spec, root)
        assert any("crashed" in e.message for e in api.list_events(run_id, level="error").items)

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    ref = stack.copd("train", str(spec_file), "--out", str(tmp_path / "reference"), "-q", timeout=300)
    assert ref.returncode == 0, ref.stderr
    want = jsonl_points(tmp_path / "reference" / "metrics.jsonl")
    assert set(got) == set(want), (set(got) ^ set(want))
    differ = {k: (got[k][0], v) for k, v in want.items()
              if not k[1].startswith(TIMING) and got[k][0] != pytest.approx(v, abs=1e-9)}
    assert not differ, differ


def test_cancel_stops_the_unit_at_the_next_step(make_stack):
    stack = make_stack(env=CRASH_ENV)
    spec = tiny_spec(name="worker-cancel", schedule={"cycles": 1})
    stack.start_api()
    worker = stack.start_worker()
    with stack.client() as api:
        run_id = api.create_run(spec).id
        api.start(run_id)
        expert = stack.wait(_mid_unit(api, run_id, "rl", 1), 180, "a Phase I unit between its two steps", every=0.1)
        assert api.cancel(run_id).status == "cancelled"
        stack.wait(lambda: any("stopped at a step boundary" in e.message
                               for e in api.list_events(run_id, level="warning").items), 60, "the unit to stop")
        points = api_points(api, run_id)
        assert (expert, "loss/grpo", 2) not in points  # it stopped before its second step
        assert not api.list_checkpoints(run_id, expert=expert).items
        time.sleep(2)  # no unit of a cancelled run starts: no other expert trains
        assert not any(k == "loss/grpo" and e != expert for (e, k, _) in api_points(api, run_id))
        assert api.get_run(run_id).status == "cancelled"
        assert worker.poll() is None  # the worker is fine and waits for work

        # a unit that raises fails the run, with the reason as an error event; the worker carries on
        broken = tiny_spec(name="worker-broken", experts=[
            {"name": "text", "domain": {"type": "jsonl", "path": str(stack.data_dir / "missing.jsonl")}},
            {"name": "image", "domain": "builtin:grid"}])
        run_id = api.create_run(broken).id
        api.start(run_id)
        stack.wait_status(api, run_id, {"failed"}, 120)
        errors = [e.message for e in api.list_events(run_id, level="error").items]
        assert any("c0/eval failed" in m and "missing.jsonl" in m for m in errors), errors
        assert worker.poll() is None

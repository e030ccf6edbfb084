"""Faults injected during a real run (API under uvicorn, a Celery worker, their own PostgreSQL and Redis):
after each the run must end `completed` — by itself where the fault is transient — and hold exactly the
(expert, key, step) points of a clean `copd train` of the same spec: none lost, none doubled, the same
values. A fault that cannot be survived alone (a full disk) must leave the run resumable, with an event
saying how. docs/reliability.md has the table these tests fill in.

SIGTERM and SIGKILL of a worker mid-unit are tests/worker/test_crash.py's; this file adds the services.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from contract.client import Client
from tests.services import OwnPostgres, OwnRedis
from tests.worker.checks import TIMING, api_points, check_completed_run, jsonl_points
from tests.worker.conftest import TOKEN, tiny_spec
from tests.worker.test_crash import _mid_unit
from trainer.checkpoint import verify_checkpoint

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

SPEC = tiny_spec(name="chaos", schedule={"opd_steps": 2})
# a pause after every step but a unit's last, so a fault lands mid-unit; a quick reaper and watchdog
ENV = {"COPD_HEARTBEAT_TIMEOUT_S": "60", "COPD_REAPER_INTERVAL_S": "1", "COPD_HEARTBEAT_INTERVAL_S": "1",
       "COPD_STEP_DELAY_S": "1", "COPD_STALL_TIMEOUT_S": "8", "COPD_API_RETRY_S": "120"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The clean run's points: `copd train` of SPEC."""
    out = tmp_path_factory.mktemp("reference")
    (out / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    env = {k: v for k, v in os.environ.items() if not k.startswith("COPD_")}
    env.update(COPD_DATA_DIR=str(out / "data"), HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(__file__).parents[2]))
    res = subprocess.run([os.sys.executable, "-m", "copd.cli", "train", str(out / "spec.yaml"), "--out",
                          str(out / "run"), "-q"], cwd=Path(__file__).parents[2], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return jsonl_points(out / "run" / "metrics.jsonl")


def _same_points(got: dict, want: dict) -> None:
    assert set(got) == set(want), sorted(set(got) ^ set(want))[:10]  # none lost, none extra
    differ = {k: (got[k][0], v) for k, v in want.items()
              if not k[1].startswith(TIMING) and got[k][0] != pytest.approx(v, abs=1e-9)}
    assert not differ, list(differ.items())[:5]


def test_database_and_broker_restarts_mid_run_are_survived_alone(make_stack, reference) -> None:
    """PostgreSQL restarted in Phase I and Redis (no persistence: every queued message and chord state
    lost) in Phase II of cycle 1: no one touches the run, and it completes with the clean run's points."""
    pg, redis = OwnPostgres(), OwnRedis()
    try:
        stack = make_stack(broker_url=redis.url, env={**ENV, "COPD_DATABASE_URL": pg.url})
        stack.start_api()
        stack.start_worker("w1")
        with Client(stack.api_url, TOKEN, timeout=30, retry_s=60) as api:  # rides out the restarts too
            run_id = api.create_run(SPEC).id
            api.start(run_id)
            stack.wait(_mid_unit(api, run_id, "rl", 1), 240, "a Phase I unit between its two steps", every=0.1)
            pg.restart(down_s=2.0)  # requests meanwhile are 503s, retried by the worker's client
            stack.wait(_mid_unit(api, run_id, "opd", 3), 240, "a Phase II unit between its two steps", every=0.1)
            redis.restart()
            stack.wait_status(api, run_id, {"completed"}, 420)
            root = stack.data_dir / "runs" / str(run_id)
            got = check_completed_run(api, run_id, SPEC, root)
            warnings = [e.message for e in api.list_events(run_id, level="warning").items]
            errors = [e.message for e in api.list_events(run_id, level="error").items]
        assert any(m.startswith("watchdog: no unit in flight") for m in warnings), warnings
        assert not errors, errors
        api_log = stack.logs["api"].read_text(errors="replace")
        assert "Internal Server Error" not in api_log and "unhandled error" not in api_log
    finally:
        pg.close()
        redis.close()
    _same_points(got, reference)


def test_a_full_disk_mid_run_is_named_cleaned_up_and_resumable(make_stack, reference) -> None:
    """The run folder's disk fills up in Phase I: the run is crashed with an event naming the folder, no
    partial checkpoint is left, earlier checkpoints are intact, progress is the units done; freed and
    resumed, it completes with the clean run's points."""
    stack = make_stack(env=ENV)
    runs = stack.data_dir / "runs"
    runs.mkdir(parents=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(runs)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip()[:100]})")
    filler = runs / f"filler-{uuid.uuid4().hex[:6]}"
    try:
        stack.start_api()
        stack.start_worker("w1")
        with Client(stack.api_url, TOKEN, timeout=30, retry_s=60) as api:
            run_id = api.create_run(SPEC).id
            api.start(run_id)
            stack.wait(_mid_unit(api, run_id, "opd", 3), 240, "a Phase II unit between its two steps", every=0.1)
            with open(filler, "wb") as f:  # the disk is full from here on
                try:
                    while True:
                        f.write(b"\0" * 2**16)
                        f.flush()
                except OSError:
                    pass
            run = stack.wait_status(api, run_id, {"crashed"}, 180)
            root = runs / str(run_id)
            errors = [e.message for e in api.list_events(run_id, level="error").items]
            assert any(f"no space left on device at {root}" in m and f"copd runs resume {run_id}" in m
                       for m in errors), errors
            assert run.progress < 0.5  # cycle 1's Phase II never finished: not 100 %
            leftovers = [p for p in root.rglob(".*") if ".tmp-" in p.name]
            assert not leftovers, leftovers
            for c in api.list_checkpoints(run_id, limit=1000).items:  # every registered one is whole
                assert verify_checkpoint(Path(c.uri)), c
            filler.unlink()
            assert api.resume(run_id).status == "queued"
            stack.wait_status(api, run_id, {"completed"}, 420)
            got = check_completed_run(api, run_id, SPEC, root)
    finally:
        stack.close()
        subprocess.run(["umount", "-l", str(runs)], check=False)
    _same_points(got, reference)


EVAL_SPEC = tiny_spec(name="chaos-eval-merge", schedule={"cycles": 1, "opd_steps": 2}, eval={"prompts": 96})


def test_workers_stopped_in_evaluation_and_merge_lose_and_double_nothing(make_stack, tmp_path) -> None:
    """SIGTERM while cycle 1 is evaluated, SIGKILL while the experts are merged (own Redis): the run ends
    `completed` — by itself, or after the one resume a crashed run asks for — with the clean run's points."""
    import signal

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(EVAL_SPEC))
    redis = OwnRedis()
    try:
        stack = make_stack(broker_url=redis.url, env={**ENV, "COPD_HEARTBEAT_TIMEOUT_S": "10"})
        stack.start_api()
        worker = stack.start_worker("w1")
        with Client(stack.api_url, TOKEN, timeout=30, retry_s=60) as api:
            run_id = api.create_run(EVAL_SPEC).id
            api.start(run_id)

            def in_phase(phase: str, cycle: int):
                return lambda: (lambda r: r.phase == phase and r.cycle == cycle)(api.get_run(run_id))

            stack.wait(in_phase("eval", 1), 300, "cycle 1's evaluation", every=0.05)
            worker.send_signal(signal.SIGTERM)  # warm: the unit in progress finishes, or goes back to the queue
            assert worker.wait(120) == 0, stack.tails()
            worker = stack.start_worker("w2")
            stack.wait(in_phase("merge", 1), 300, "the merge", every=0.05)
            worker.send_signal(signal.SIGKILL)
            worker.wait(30)
            stack.start_worker("w3")
            run = stack.wait_status(api, run_id, {"completed", "crashed"}, 300)
            if run.status == "crashed":  # the merge died mid-unit: the reaper says so, a resume finishes it
                assert api.resume(run_id).status == "queued"
                stack.wait_status(api, run_id, {"completed"}, 300)
            got = check_completed_run(api, run_id, EVAL_SPEC, stack.data_dir / "runs" / str(run_id))
    finally:
        redis.close()
    ref = stack.copd("train", str(spec_file), "--out", str(tmp_path / "reference"), "-q", timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    _same_points(got, jsonl_points(tmp_path / "reference" / "metrics.jsonl"))

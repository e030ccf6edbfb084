"""A run end to end from REST through real Celery workers: Redis, and the embedded default via `copd up`."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.worker.checks import api_points, check_completed_run, check_knob_applied_after_patch
from tests.worker.conftest import ROOT, TERMINAL, tiny_spec

pytestmark = pytest.mark.slow


@pytest.mark.redis
def test_run_end_to_end_on_redis(make_stack, redis_url):
    stack = make_stack(broker_url=redis_url)
    stack.start_api()
    stack.start_worker()
    spec = tiny_spec()
    with stack.client() as api:
        run = api.create_run(spec)
        assert api.start(run.id).status == "queued"
        # mid-run: Phase I of cycle 1 under way, cycle 2 still to come
        stack.wait(lambda: api.get_run(run.id).phase == "rl", 180, "Phase I of cycle 1")
        t_patch = time.time()
        knobs = api.patch_knobs(run.id, 0, {"beta": 0.5})
        stack.wait_status(api, run.id, {"completed"}, 240)
        points = check_completed_run(api, run.id, spec, stack.data_dir / "runs" / str(run.id))
        check_knob_applied_after_patch(api, run.id, spec, points, t_patch, knobs.version, 0.5)
        # every eval posted each domain's first 4 held-out prompts; the merge added its answers to the last
        samples = api.get_samples(run.id)
        assert samples.cycle == 2 and samples.cycles == [0, 1, 2]
        assert [(s.domain, s.index) for s in samples.samples] == [(d, i) for d in ("text", "image", "video")
                                                                  for i in range(4)]
        assert all({a.model for a in s.answers} == {"text", "image", "video", "merged"} for s in samples.samples)
        assert {a.model for s in api.get_samples(run.id, cycle=1).samples for a in s.answers} == {"text", "image", "video"}

        # a fork from the experts' end of cycle 1 evaluates cycle 1 and trains cycle 2 only
        start = next(c for c in api.list_checkpoints(run.id, expert="text").items if Path(c.uri).name == "c1-opd")
        fork = api.fork(run.id, start.id, name="worker-e2e-fork")
        api.start(fork.id)
        stack.wait_status(api, fork.id, {"completed"}, 240)
        got = api_points(api, fork.id)
        for e in ("text", "image", "video"):
            assert sorted(s for (x, k, s) in got if x == e and k == "loss/grpo") == [4, 5, 6]
            assert sorted(s for (x, k, s) in got if x == e and k == "acc/text") == [3, 6]
        assert [c.expert for c in api.list_checkpoints(fork.id, final=True).items] == ["merged"]


@pytest.mark.redis
def test_sharded_experts_through_a_worker(make_stack, redis_url):
    """compute.gpus_per_expert: 2 — each training unit the worker takes runs as 2 FSDP processes (gloo on
    this CPU); their reports reach the API through the worker's REST reporter; the run completes."""
    stack = make_stack(broker_url=redis_url)
    stack.start_api()
    stack.start_worker()
    spec = tiny_spec(experts=[{"name": "text", "domain": "builtin:arith"}, {"name": "video", "domain": "builtin:frames"}],
                     schedule={"cycles": 1, "rl_steps": 1, "opd_steps": 1}, compute={"gpus_per_expert": 2})
    with stack.client() as api:
        run = api.create_run(spec)
        api.start(run.id)
        stack.wait_status(api, run.id, {"completed"}, 420)
        points = check_completed_run(api, run.id, spec, stack.data_dir / "runs" / str(run.id))
        ranks = {(e, s): v for (e, k, s), (v, _) in points.items() if k == "fsdp/ranks"}
        assert ranks == {(e, s): 2.0 for e in ("text", "video") for s in (1, 2)}
        losses = [v for (e, k, s), (v, _) in points.items() if k in ("loss/grpo", "loss/opd")]
        assert len(losses) == 6 and all(math.isfinite(v) for v in losses)


def test_run_end_to_end_embedded_with_copd_up(make_stack, tmp_path):
    """`copd up` (SQLite, folder broker, one worker); the CLI creates the run, changes β, pauses, resumes and
    watches it; Ctrl-C stops everything."""
    stack = make_stack()
    spec = tiny_spec()
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    up = stack.spawn("up", [sys.executable, "-m", "copd.cli", "up", "--port", str(stack.port), "--no-ui"])
    stack.logs.update({"api": stack.data_dir / "logs" / "api.log", "worker": stack.data_dir / "logs" / "worker.log"})
    stack.wait(lambda: "Ctrl-C stops everything" in stack.logs["up"].read_text(), 90, "copd up's banner")
    banner = stack.logs["up"].read_text()
    assert stack.api_url in banner and "COPD_API_TOKEN" in banner and "dashboard" in banner

    created = stack.copd("runs", "create", str(spec_file))
    assert created.returncode == 0, created.stderr
    run_id = int(re.search(r"run (\d+)", created.stdout).group(1))
    with stack.client() as api:
        stack.wait(lambda: api.get_run(run_id).phase == "rl", 180, "Phase I of cycle 1")
        t_patch = time.time()
        res = stack.copd("knobs", "set", str(run_id), "beta=0.5")
        assert res.returncode == 0 and "version 1" in res.stdout, res.stderr

        # pause: the units in progress finish, no new one starts; resume continues from there
        assert stack.copd("runs", "pause", str(run_id)).returncode == 0
        units = stack.data_dir / "runs" / str(run_id) / "units"

        def idle() -> list[str] | None:  # no unit running, and none finished or started for 1.5 s
            seen = None
            for _ in range(4):
                now = (sorted(p.name for p in units.glob("*.done")),
                       [e.unit for e in api.get_run(run_id).experts if e.status == "running"])
                if now[1] or (seen is not None and now != seen):
                    return None
                seen = now
                time.sleep(0.5)
            return seen[0]

        done = stack.wait(idle, 120, "the paused run's units to finish")
        time.sleep(3)  # nothing may start while paused
        assert sorted(p.name for p in units.glob("*.done")) == done
        assert api.get_run(run_id).status == "paused"
        assert stack.copd("runs", "resume", str(run_id)).returncode == 0

        watched = stack.copd("runs", "watch", str(run_id), timeout=300)
        assert watched.returncode == 0, watched.stderr[-3000:] + stack.tails()
        assert f"run {run_id} completed" in watched.stdout
        points = check_completed_run(api, run_id, spec, stack.data_dir / "runs" / str(run_id))
        check_knob_applied_after_patch(api, run_id, spec, points, t_patch, 1, 0.5)
        assert api.get_run(run_id).status not in TERMINAL - {"completed"}

    up.send_signal(signal.SIGINT)
    assert up.wait(90) == 0, stack.tails()
    assert "stopped." in stack.logs["up"].read_text()
    assert not _processes_using(stack.data_dir), "copd up left processes behind"


def _processes_using(data_dir: Path) -> list[int]:
    """Pids whose environment points COPD_DATA_DIR at `data_dir` (children of `copd up` that outlived it)."""
    needle = f"COPD_DATA_DIR={data_dir}\0".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if needle in (proc / "environ").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


@pytest.mark.redis
def test_lockstep_phase_two_through_workers(make_stack, redis_url):
    """opd.teacher_sync: step through two real workers: Phase II of each cycle is one unit (`c<c>/lockstep`)
    that one worker runs for all three experts; the join moves on from its done marker; every expert gets
    its Phase II steps, its `c<c>-opd` checkpoint and the overlap after each phase."""
    stack = make_stack(broker_url=redis_url)
    stack.start_api()
    stack.start_worker("w1")
    stack.start_worker("w2")
    spec = tiny_spec(opd={"teacher_sync": "step"}, schedule={"cycles": 2, "rl_steps": 1, "opd_steps": 2})
    with stack.client() as api:
        run = api.create_run(spec)
        assert run.opd.teacher_sync == "step"
        api.start(run.id)
        stack.wait(lambda: api.get_run(run.id).phase == "lockstep", 240, "a lockstep Phase II")
        stack.wait_status(api, run.id, {"completed"}, 300)
        root = stack.data_dir / "runs" / str(run.id)
        points = check_completed_run(api, run.id, spec, root)
        for c in (1, 2):
            assert (root / "units" / f"c{c}_lockstep.done").exists()
            assert not list((root / "units").glob(f"c{c}_opd_*.done"))
            assert (None, "overlap_rl/mean", c) in points and (None, "overlap/mean", c) in points
        for e in ("text", "image", "video"):
            assert sorted(s for (x, k, s) in points if x == e and k == "opd/kl") == [2, 3, 5, 6]
            assert {k for (x, k, s) in points if x == e and k.startswith("opd/kl/")} == \
                {f"opd/kl/{t}" for t in ("text", "image", "video") if t != e}

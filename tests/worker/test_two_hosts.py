"""Two worker hosts with no shared disk finish one run: checkpoints through an S3 server on loopback (moto),
markers and leases in the API's database. Host A starts the run and stops; its disk then disappears; host B,
with a data dir of its own, downloads what it needs from the store and finishes."""

from __future__ import annotations

import signal
import uuid

import pytest

from tests.worker.checks import api_points
from tests.worker.conftest import S3_BUCKET, tiny_spec

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def test_two_hosts_without_a_shared_disk_finish_one_run(make_stack, redis_url, s3_env, tmp_path):
    from trainer.ckptfiles import verify_checkpoint
    from trainer.models import load_pretrained
    from worker.store import CheckpointStore

    url = f"s3://{S3_BUCKET}/{uuid.uuid4().hex}"
    store_env = {**s3_env, "COPD_CHECKPOINT_URL": url, "COPD_LEASE_TTL_S": "20"}
    stack = make_stack(broker_url=redis_url, env=store_env)
    host_b = make_stack().data_dir  # a second data dir (its own run folders and cache), sharing only the base model
    spec = tiny_spec(experts=[{"name": "text", "domain": "builtin:arith"}, {"name": "video", "domain": "builtin:frames"}])
    stack.start_api()
    stack.start_worker("hostA")
    with stack.client() as api:
        run = api.create_run(spec)
        api.start(run.id)
        done = lambda: {m.name: m.body for m in api.list_markers(run.id, kind="done").items}  # noqa: E731
        stack.wait(lambda: {"c1/rl/text", "c1/rl/video"} <= set(done()), 300, "Phase I of cycle 1 on host A")
        assert stack.stop("hostA", signal.SIGTERM) is not None  # a unit in flight goes back to the queue
        (stack.data_dir / "runs").rename(stack.data_dir / "runs-gone")  # host A's disk is out of reach
        stack.start_worker("hostB", COPD_DATA_DIR=str(host_b))
        stack.wait_status(api, run.id, {"completed"}, 420)

        by_host = {name: body["worker"].split("@")[0] for name, body in done().items() if "worker" in body}
        assert {"hostA", "hostB"} <= set(by_host.values()), by_host
        assert by_host["final/merge"] == "hostB" and by_host["c1/rl/text"] == "hostA"
        points = api_points(api, run.id)  # every point once
        assert sorted(s for (e, k, s) in points if e == "text" and k == "loss/grpo") == [1, 2, 3, 4, 5, 6]
        ckpts = api.list_checkpoints(run.id, limit=1000).items
        assert ckpts and all(c.uri.startswith(f"{url}/runs/{run.id}/") for c in ckpts)
        final = [c for c in ckpts if c.final]
        assert [(c.expert, c.uri) for c in final] == [("merged", f"{url}/runs/{run.id}/final")]
        # host B downloaded host A's Phase I checkpoints (through its cache), and nothing is in A's old folder
        assert any((host_b / "cache" / "checkpoints").iterdir())
        assert verify_checkpoint(host_b / "runs" / str(run.id) / "checkpoints" / "text" / "c1-rl")
        # the default retention kept every weight and dropped superseded optimizer states, in the store too
        keep = {(c.expert, c.uri.rsplit("/", 1)[-1]): c for c in ckpts}
        assert keep[("text", "c1-rl")].optimizer is False and keep[("text", "c2-opd")].optimizer is True
        assert not any(c.deleted_at for c in ckpts)

        # a fork from the experts' end of cycle 1, run by a third host with an empty disk: its starting
        # checkpoints are copied inside the store, and host C downloads them
        stack.stop("hostB", signal.SIGTERM)
        host_c = make_stack().data_dir
        stack.start_worker("hostC", COPD_DATA_DIR=str(host_c))
        start = keep[("text", "c1-opd")]
        fork = api.fork(run.id, start.id, name="two-hosts-fork")
        api.start(fork.id)
        stack.wait_status(api, fork.id, {"completed"}, 300)
        got = api_points(api, fork.id)
        assert sorted(s for (e, k, s) in got if e == "text" and k == "loss/grpo") == [4, 5, 6]
        fork_ckpts = api.list_checkpoints(fork.id, limit=1000).items
        assert fork_ckpts and all(c.uri.startswith(f"{url}/runs/{fork.id}/") for c in fork_ckpts)
        assert verify_checkpoint(host_c / "runs" / str(fork.id) / "checkpoints" / "video" / "c1-opd")

    # anyone with the store reads the final model back, verified against the registered sha256
    store = CheckpointStore(url, tmp_path / "reader-cache")
    assert store.fetch(f"runs/{run.id}/final", tmp_path / "final") == final[0].sha256
    model, _ = load_pretrained(str(tmp_path / "final"))
    assert sum(p.numel() for p in model.parameters()) > 0
    names = [p.rsplit("/", 1)[-1] for p in store.fs.ls(f"{store.root}/runs/{run.id}/checkpoints/text/c1-rl", detail=False)]
    assert "model.safetensors" in names and "optimizer.pt" not in names


def test_a_store_that_is_down_crashes_the_run_with_a_clear_event(make_stack, s3_env):
    """Nothing listens at the store's endpoint: the first upload fails within COPD_STORE_TIMEOUT_S, the run is
    `crashed` (resumable) and its event names the store and the operation; once a store answers there,
    `resume` completes the run."""
    from tests.worker.conftest import free_port

    down = {**s3_env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
            "COPD_CHECKPOINT_URL": f"s3://{S3_BUCKET}/down", "COPD_STORE_TIMEOUT_S": "2"}
    stack = make_stack(env=down)
    stack.start_api()
    stack.start_worker()
    spec = tiny_spec(experts=[{"name": "text", "domain": "builtin:arith"}, {"name": "video", "domain": "builtin:frames"}],
                     schedule={"cycles": 1, "rl_steps": 1, "opd_steps": 1})
    with stack.client() as api:
        run = api.create_run(spec)
        api.start(run.id)
        stack.wait_status(api, run.id, {"crashed"}, 300)
        errors = [e.message for e in api.list_events(run.id, limit=1000).items if e.level == "error"]
        assert any(f"checkpoint store s3://{S3_BUCKET}/down: " in m and f"runs/{run.id}/checkpoints/" in m
                   and "failed" in m and "copd runs resume" in m for m in errors), errors
        assert api.list_checkpoints(run.id).total == 0  # nothing registered that the store does not hold

        # the store answers again (an S3 server on that address, with the bucket): resume finishes the run
        import boto3
        from moto.server import ThreadedMotoServer

        endpoint = down["AWS_ENDPOINT_URL"]
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(endpoint.rsplit(":", 1)[1]), verbose=False)
        server.start()
        try:
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                         aws_secret_access_key="testing-secret").create_bucket(Bucket=S3_BUCKET)
            api.action(run.id, "resume")
            stack.wait_status(api, run.id, {"completed"}, 300)
            final = api.list_checkpoints(run.id, final=True).items
            assert [c.uri for c in final] == [f"s3://{S3_BUCKET}/down/runs/{run.id}/final"]
        finally:
            server.stop()

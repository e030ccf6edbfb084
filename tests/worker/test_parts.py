"""The worker's parts without processes: configuration, phases, marker files, the broker, the client, the CLI."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from kombu import Connection

from copd.cli import parse_knob_assignments
from copd.client import ApiError, Client
from copd.settings import Settings
from server.dispatch import broker_config
from tests.worker.conftest import ROOT, free_port, tiny_spec
from trainer.spec import parse_spec
from worker.config import WorkerSettings, celery_config
from worker.runfolder import LockAbandoned, RunFolder, phases


def test_celery_config_embedded_and_redis(tmp_path):
    conf = celery_config(Settings(data_dir=tmp_path), WorkerSettings())
    assert conf["broker_url"] == "filesystem://" and conf["broker_transport"] == "copd.fsbroker:Transport"
    assert conf["result_backend"] == f"db+sqlite:///{tmp_path / 'celery-results.sqlite'}"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1 and conf["worker_pool"] == "solo"
    assert conf["broker_transport_options"]["visibility_timeout"] == 6 * 3600
    assert conf["task_routes"] == {"copd.run_unit": {"queue": "gpu"}} and conf["task_default_queue"] == "light"
    # the server sends with the same broker, folders and routes
    server = broker_config(Settings(data_dir=tmp_path))
    assert {k: v for k, v in conf.items() if k in server and k != "broker_transport_options"} == \
           {k: v for k, v in server.items() if k != "broker_transport_options"}

    redis = celery_config(Settings(data_dir=tmp_path, broker_url="redis://h:6379/2"),
                          WorkerSettings(visibility_timeout_s=7200))
    assert redis["result_backend"] == "redis://h:6379/2"
    assert redis["broker_transport_options"] == {"visibility_timeout": 7200}
    own = celery_config(Settings(data_dir=tmp_path, broker_url="redis://h/2"), WorkerSettings(result_backend="rpc://"))
    assert own["result_backend"] == "rpc://"


def test_phases_follow_the_plan():
    spec = parse_spec(tiny_spec())
    ids = [p.id for p in phases(spec)]
    assert ids == ["c0/eval", "c1/rl", "c1/opd", "c1/eval", "c2/rl", "c2/opd", "c2/eval", "final/merge"]
    assert [u.id for u in phases(spec)[2].units] == ["c1/opd/text", "c1/opd/image", "c1/opd/video"]
    assert phases(spec)[-1].units[0].cycle == 2


def test_run_folder_markers_claims_and_locks(tmp_path):
    spec = parse_spec(tiny_spec())
    folder = RunFolder(tmp_path)
    assert folder.next_phase(spec).id == "c0/eval"
    folder.mark_done("c0/eval", {"result": {}})
    assert folder.phase_done(spec, "c0/eval") and folder.next_phase(spec).id == "c1/rl"
    for e in ("text", "image"):
        folder.mark_done(f"c1/rl/{e}", {})
    assert not folder.phase_done(spec, "c1/rl") and folder.next_phase(spec).id == "c1/rl"
    assert folder.claim("c1/rl", "a") and not folder.claim("c1/rl", "b")  # a second join sends nothing
    assert folder.claim("c1/rl", "resume", force=True)                     # start/resume always sends
    with folder.lock("c1/rl/video", wait=lambda: False):
        with pytest.raises(LockAbandoned):  # held (another open file is another holder): wait() gives up
            with folder.lock("c1/rl/video", wait=lambda: False):
                pass
    with folder.lock("c1/rl/video", wait=lambda: False):  # released when the holder let go
        pass


def test_embedded_broker_is_atomic(tmp_path):
    opts = broker_config(Settings(data_dir=tmp_path))["broker_transport_options"]
    queue_dir = tmp_path / "broker" / "queue"
    (queue_dir / ".000_x.q.msg.tmp").write_text("")   # a message being written: not visible
    (queue_dir / "000_y.q.msg").write_text("")         # a broken one: dropped, not fatal
    with Connection("filesystem://", transport="copd.fsbroker:Transport", transport_options=opts) as conn:
        q = conn.SimpleQueue("q")
        q.put({"n": 1})
        q.put({"n": 2})
        got = [q.get(timeout=2), q.get(timeout=2)]
        assert [m.payload for m in got] == [{"n": 1}, {"n": 2}]
        for m in got:
            m.ack()
        with pytest.raises(q.Empty):  # reads the broken one, drops it, finds nothing else
            q.get(timeout=0.5)
        q.close()
    assert [p.name for p in queue_dir.iterdir()] == [".000_x.q.msg.tmp"]


def test_client_raises_api_error_with_the_servers_detail():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer tok"
        return httpx.Response(409, json={"detail": "run 7 is running; start needs it draft", "errors": []})

    with Client("http://api", "tok", transport=httpx.MockTransport(handler)) as api:
        with pytest.raises(ApiError) as err:
            api.start(7)
    assert err.value.status == 409 and err.value.detail == "run 7 is running; start needs it draft"
    with Client(f"http://127.0.0.1:{free_port()}", "tok") as api:
        with pytest.raises(ApiError) as err:
            api.get_run(1)
    assert err.value.status == 0 and "cannot reach the API" in err.value.detail


def test_knob_assignments():
    assert parse_knob_assignments(["beta=0.5"]) == {"beta": 0.5}
    assert parse_knob_assignments(["beta.text=0.2", "beta.image=1", "rl_steps=4"]) == \
           {"beta": {"text": 0.2, "image": 1}, "rl_steps": 4}
    assert parse_knob_assignments(["teacher_weights.text.image=0"]) == {"teacher_weights": {"text": {"image": 0}}}
    with pytest.raises(ValueError, match="KNOB=VALUE"):
        parse_knob_assignments(["beta"])


@pytest.mark.parametrize("args, needle", [
    (["knobs", "set", "1", "beta"], "KNOB=VALUE"),
    (["runs", "watch", "1"], "cannot reach the API"),
    (["knobs", "set", "1", "beta=0.5"], "cannot reach the API"),
])
def test_cli_failures_are_one_line(tmp_path, args, needle):
    env = {"COPD_DATA_DIR": str(tmp_path), "COPD_API_URL": f"http://127.0.0.1:{free_port()}",
           "COPD_API_TOKEN": "x" * 32, "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "copd.cli", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], res.stderr


def test_copd_up_refuses_a_busy_port(tmp_path):
    import socket

    from copd.stack import hide_password

    assert hide_password("redis://:secret@redis:6379/0") == "redis://:***@redis:6379/0"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {"COPD_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
        res = subprocess.run([sys.executable, "-m", "copd.cli", "up", "--port", str(port), "--no-ui"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert res.stderr.strip().splitlines() == [f"error: API port {port} on 127.0.0.1 is in use (another copd up?); "
                                               "choose another with --port"]


def test_every_spec_field_reaches_the_worker():
    """A worker reads the spec from GET /runs/{id}: every RunSpec block must survive that trip, not only the
    ones the API body lists by name (a block missing there silently falls back to its defaults)."""
    from datetime import datetime, timezone
    from types import SimpleNamespace

    from server.schemas import run_public
    from trainer.spec import RunSpec
    from worker.runs import spec_of

    spec = parse_spec(tiny_spec(
        strategy="static_opd", mixed={"weights": {"text": 2.0, "image": 1.0, "video": 1.0}},
        distill={"steps": 3, "teacher": "image", "student": "text", "alpha": 0.5},
        merge={"weights": {"text": 0.5, "image": 0.25, "video": 0.25}},
        rollout={"engine": "hf", "gpu_memory_utilization": 0.5, "sleep_mode": False, "tis_cap": None},
        compute={"dtype": "bf16", "master_fp32": True, "gpus_per_expert": 2, "teacher_device": "cpu"}))
    row = SimpleNamespace(
        spec=spec.model_dump(mode="json"), id=1, status="draft", cycle=0, phase=None, progress=0.0,
        created_at=datetime.now(timezone.utc), started_at=None, finished_at=None, parent_run_id=None,
        parent_checkpoint_id=None,
        experts=[SimpleNamespace(name=e.name, domain=e.domain, status="pending", unit=None) for e in spec.experts])
    assert spec_of(run_public(row)) == spec
    assert set(RunSpec.model_fields) <= set(run_public(row).model_dump())


def test_rest_reporter_posts_samples_in_chunks_and_never_fails_the_unit_for_them():
    from contract.client import ApiError
    from contract.plan import Unit
    from contract.schemas import PromptSample
    from worker.reporting import SAMPLES_PER_POST, RestReporter

    class Api:
        def __init__(self, fail: int | None = None):
            self.posts, self.events, self.fail = [], [], fail

        def post_samples(self, run_id, cycle, items):
            if self.fail:
                raise ApiError(self.fail, "samples.0.images.0: not a PNG image")
            self.posts.append((run_id, cycle, len(items)))

        def post_event(self, run_id, message, level="info", expert=None):
            self.events.append((level, message))

    items = [PromptSample(domain="text", index=i, prompt="1+1=", reference="2") for i in range(SAMPLES_PER_POST + 3)]

    def reporter(api):
        return RestReporter(api, 7, Unit(cycle=3, kind="eval"), cycles=2, applied=set(), progress_span=(0, 1),
                            stop_check_s=1, step_delay_s=0, shutting_down=lambda: False)

    ok = Api()
    reporter(ok).samples(3, items)
    assert ok.posts == [(7, 2, SAMPLES_PER_POST), (7, 2, 3)]  # the API's cycle: at most the run's last
    refused = Api(fail=422)
    reporter(refused).samples(1, items)
    assert refused.events and refused.events[0][0] == "warning" and "not a PNG" in refused.events[0][1]
    with pytest.raises(ApiError):
        reporter(Api(fail=503)).samples(1, items)

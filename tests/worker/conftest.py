"""Worker tests with real processes: the API (uvicorn) and Celery workers (`copd worker`) as subprocesses.

Each test gets its own COPD_DATA_DIR (SQLite, embedded broker or a Redis DB, run folders); the tiny base
model is built once per session into a shared folder that every data dir links to. Nothing runs eagerly.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from copd.client import Client

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "worker-tests-token-0123456789abcdef"
# A database number of its own, flushed before and after (COPD_TEST_REDIS_DB lets parallel checkouts differ).
REDIS_URL = f"redis://127.0.0.1:6379/{os.environ.get('COPD_TEST_REDIS_DB', '13')}"
TERMINAL = {"completed", "failed", "cancelled", "crashed"}


def tiny_spec(**changes: Any) -> dict[str, Any]:
    """The issue's tiny CoPD spec: 3 experts, 2 cycles, 2 RL steps + 1 OPD step per cycle."""
    spec: dict[str, Any] = {
        "name": "worker-e2e", "base_model": "builtin:tiny", "strategy": "copd",
        "experts": [{"name": "text", "domain": "builtin:arith"}, {"name": "image", "domain": "builtin:grid"},
                    {"name": "video", "domain": "builtin:frames"}],
        "topology": "all_pairs",
        "schedule": {"cycles": 2, "rl_steps": 2, "opd_steps": 1},
        "grpo": {"group_size": 4, "prompts_per_step": 4, "lr": 1e-3, "max_new_tokens": 5},
        "opd": {"beta": 1.0, "prompts_per_step": 4, "samples_per_prompt": 2},
        "eval": {"prompts": 16, "overlap_k": 4, "overlap_prompts": 8},
        "tiny": {"hidden_size": 32, "layers": 1, "heads": 2, "kv_heads": 1, "intermediate_size": 64,
                 "warmstart_max_steps": 60, "warmstart_batch": 16,
                 "target_low": 0.0, "target_high": 1.0},  # any accuracy: a test needs a model, not a skill
        "seed": 0,
    }
    for k, v in changes.items():
        spec[k] = {**spec[k], **v} if isinstance(v, dict) and isinstance(spec.get(k), dict) else v
    return spec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """API and workers of one test as subprocesses, with logs in the data dir (shown when a wait fails)."""

    def __init__(self, data_dir: Path, models: Path, *, broker_url: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "models").symlink_to(models, target_is_directory=True)
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}"
        base = {k: v for k, v in os.environ.items() if not k.startswith("COPD_")}
        self.env = {**base, "COPD_DATA_DIR": str(data_dir), "COPD_API_URL": self.api_url, "COPD_API_TOKEN": TOKEN,
                    "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": str(ROOT), **(env or {})}
        if broker_url:
            self.env["COPD_BROKER_URL"] = broker_url
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def spawn(self, name: str, argv: list[str], **env: str) -> subprocess.Popen:
        log = self.data_dir / f"{name}.log"
        self.logs[name] = log
        proc = subprocess.Popen(argv, cwd=ROOT, env={**self.env, **env}, stdout=open(log, "ab"),
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name] = proc
        return proc

    def copd(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "copd.cli", *args], cwd=ROOT, env={**self.env, **env},
                              capture_output=True, text=True, timeout=timeout)

    def start_api(self, **env: str) -> None:
        res = self.copd("db", "upgrade")
        assert res.returncode == 0, res.stderr
        self.spawn("api", [sys.executable, "-m", "uvicorn", "--factory", "server.app:create_app",
                           "--host", "127.0.0.1", "--port", str(self.port)], **env)
        self.wait(self._healthy, 60, "the API to answer /healthz")

    def start_worker(self, name: str = "worker", **env: str) -> subprocess.Popen:
        return self.spawn(name, [sys.executable, "-m", "copd.cli", "worker", "--name", f"{name}@%h"], **env)

    def _healthy(self) -> bool:
        try:
            return self.client().healthz().get("status") == "ok"
        except Exception:
            return False

    def client(self) -> Client:
        return Client(self.api_url, TOKEN, timeout=30)

    def tails(self, n: int = 25) -> str:
        out = []
        for name, path in self.logs.items():
            lines = path.read_text(errors="replace").splitlines() if path.exists() else []
            out.append(f"--- {name}.log (last {n} lines) ---\n" + "\n".join(lines[-n:]))
        return "\n".join(out)

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
        """Poll `predicate` until truthy; fails with the processes' log tails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(every)
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{self.tails()}")

    def wait_status(self, api: Client, run_id: int, statuses: set[str], timeout: float) -> Any:
        def reached():
            run = api.get_run(run_id)
            if run.status in TERMINAL - statuses:
                pytest.fail(f"run {run_id} is {run.status}, expected {statuses}\n{self.tails()}")
            return run if run.status in statuses else None

        return self.wait(reached, timeout, f"run {run_id} to be {' or '.join(sorted(statuses))}")

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def close(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name, timeout=20)


@pytest.fixture(scope="session")
def shared_models(tmp_path_factory) -> Path:
    """The tiny base model's cache for the session (the first worker builds it, the others reuse it)."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def make_stack(tmp_path, shared_models):
    stacks: list[Stack] = []

    def make(**kwargs: Any) -> Stack:
        stack = Stack(tmp_path / f"data{len(stacks)}", shared_models, **kwargs)
        stacks.append(stack)
        return stack

    yield make
    for s in stacks:
        s.close()


@pytest.fixture
def redis_url() -> str:
    """REDIS_URL on a flushed database; skips without Redis, or fails when CI is set."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as err:
        if os.environ.get("CI"):
            pytest.fail(f"Redis is not reachable at {REDIS_URL} ({err}); CI needs it")
        pytest.skip(f"Redis is not reachable at {REDIS_URL}")
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


S3_BUCKET = "copd-test"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server on loopback (moto's server mode) with one bucket; yields its env vars."""
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    port = free_port()
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing-secret").create_bucket(Bucket=S3_BUCKET)
    yield env
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This process pointed at the S3 server (s3fs caches filesystems by options, not by the endpoint
    variable: cleared around the test)."""
    import s3fs

    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    s3fs.S3FileSystem.clear_instance_cache()
    yield s3_server
    s3fs.S3FileSystem.clear_instance_cache()

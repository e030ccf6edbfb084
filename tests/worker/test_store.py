"""The checkpoint store against a real S3-compatible server on loopback (moto server mode), and file://."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.worker.conftest import S3_BUCKET, free_port
from trainer.ckptfiles import drop_optimizer, manifest_sha, sha256_file, verify_checkpoint, write_manifest
from worker.store import CheckpointStore, NotInStore, StoreError


def _checkpoint(folder: Path, seed: int = 0) -> str:
    """A small checkpoint folder (weights, state, optimizer state, manifest); returns its sha256."""
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(bytes([seed]) * 4096 + b"weights")
    (folder / "trainer_state.json").write_text(json.dumps({"step": 3 + seed}))
    (folder / "optimizer.pt").write_bytes(b"adam" * 2048)
    files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(folder.iterdir())}
    return write_manifest(folder, files)[0]


def _store(tmp_path: Path, url: str, cache: str = "cache") -> CheckpointStore:
    return CheckpointStore(url, tmp_path / cache, timeout_s=10)


def test_upload_then_download_on_another_host_through_the_cache(s3_env, tmp_path, monkeypatch):
    url = f"s3://{S3_BUCKET}/{uuid.uuid4().hex}"
    sha = _checkpoint(tmp_path / "host-a" / "runs/1/checkpoints/text/c1-rl")
    a = _store(tmp_path, url, "cache-a")
    uri = a.upload(tmp_path / "host-a" / "runs/1/checkpoints/text/c1-rl", "runs/1/checkpoints/text/c1-rl")
    assert uri == f"{url}/runs/1/checkpoints/text/c1-rl" and a.rel_of(uri) == "runs/1/checkpoints/text/c1-rl"

    b = _store(tmp_path, url, "cache-b")  # another host: its own data dir and cache
    dest = tmp_path / "host-b" / "runs/1/checkpoints/text/c1-rl"
    assert b.fetch("runs/1/checkpoints/text/c1-rl", dest) == sha
    assert manifest_sha(dest) == sha and verify_checkpoint(dest)
    assert (tmp_path / "cache-b" / sha / "model.safetensors").stat().st_ino == (dest / "model.safetensors").stat().st_ino

    # a second folder of the same checkpoint comes from the cache: nothing is downloaded again
    monkeypatch.setattr(b.fs, "get_file", lambda *a, **k: pytest.fail("downloaded although the cache holds it"))
    assert b.fetch("runs/1/checkpoints/text/c1-rl", tmp_path / "host-b" / "again") == sha


def test_a_changed_file_fails_verification_and_a_missing_one_is_named(s3_env, tmp_path):
    url = f"s3://{S3_BUCKET}/{uuid.uuid4().hex}"
    _checkpoint(tmp_path / "src")
    store = _store(tmp_path, url)
    store.upload(tmp_path / "src", "runs/2/checkpoints/text/c1-opd")
    store.fs.pipe_file(f"{store.root}/runs/2/checkpoints/text/c1-opd/model.safetensors", b"tampered")
    with pytest.raises(StoreError, match="does not match its manifest's sha256"):
        store.fetch("runs/2/checkpoints/text/c1-opd", tmp_path / "dest")
    assert not (tmp_path / "dest").exists() and not any((tmp_path / "cache").iterdir())  # nothing half-written
    with pytest.raises(NotInStore, match="has no checkpoint at runs/2/checkpoints/image/c1-opd"):
        store.fetch("runs/2/checkpoints/image/c1-opd", tmp_path / "dest")


def test_drop_optimizer_in_the_store_matches_the_local_drop(s3_env, tmp_path):
    url = f"s3://{S3_BUCKET}/{uuid.uuid4().hex}"
    old = _checkpoint(tmp_path / "local")
    store = _store(tmp_path, url)
    store.upload(tmp_path / "local", "runs/3/checkpoints/text/c1-rl")
    local_new = drop_optimizer(tmp_path / "local")
    assert store.drop_optimizer("runs/3/checkpoints/text/c1-rl") == local_new
    assert local_new[0] != old and not (tmp_path / "local" / "optimizer.pt").exists()
    assert store.fetch("runs/3/checkpoints/text/c1-rl", tmp_path / "back") == local_new[0]
    assert sorted(p.name for p in (tmp_path / "back").iterdir()) == ["manifest.json", "model.safetensors",
                                                                    "trainer_state.json"]
    assert store.delete("runs/3/checkpoints/text/c1-rl") and store.manifest("runs/3/checkpoints/text/c1-rl") is None


def test_copy_inside_the_store_is_what_a_fork_starts_from(s3_env, tmp_path):
    url = f"s3://{S3_BUCKET}/{uuid.uuid4().hex}"
    sha = _checkpoint(tmp_path / "local")
    store = _store(tmp_path, url)
    store.upload(tmp_path / "local", "runs/4/checkpoints/text/c1-opd")
    store.copy("runs/4/checkpoints/text/c1-opd", "runs/5/checkpoints/text/c1-opd")
    assert store.fetch("runs/5/checkpoints/text/c1-opd", tmp_path / "fork") == sha


@pytest.mark.timeout(120)
def test_a_store_that_is_down_is_a_clear_error_not_a_hang(tmp_path, monkeypatch):
    s3fs = pytest.importorskip("s3fs")

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    s3fs.S3FileSystem.clear_instance_cache()
    _checkpoint(tmp_path / "local")
    store = CheckpointStore(f"s3://{S3_BUCKET}/down", tmp_path / "cache", timeout_s=2)
    with pytest.raises(StoreError, match=rf"checkpoint store s3://{S3_BUCKET}/down: .* failed"):
        store.upload(tmp_path / "local", "runs/1/checkpoints/text/c1-rl")
    with pytest.raises(StoreError, match="reading runs/1/checkpoints/text/c1-rl/manifest.json failed"):
        store.fetch("runs/1/checkpoints/text/c1-rl", tmp_path / "dest")
    s3fs.S3FileSystem.clear_instance_cache()


def test_file_url_store(tmp_path):
    sha = _checkpoint(tmp_path / "local")
    store = _store(tmp_path, f"file://{tmp_path / 'shared'}")
    store.upload(tmp_path / "local", "runs/1/final")
    assert (tmp_path / "shared" / "runs/1/final/manifest.json").is_file()
    assert store.fetch("runs/1/final", tmp_path / "elsewhere") == sha


def test_an_unknown_protocol_is_a_one_line_error(tmp_path):
    with pytest.raises(StoreError, match="COPD_CHECKPOINT_URL=nosuch://x"):
        CheckpointStore("nosuch://x", tmp_path)


def test_gc_refuses_a_checkpoint_held_in_another_store_before_touching_anything(tmp_path):
    from types import SimpleNamespace

    from contract.retention import Held, RetentionPlan
    from worker.checkpoints import apply_plan

    other = SimpleNamespace(id=7, uri="s3://elsewhere/prefix/runs/3/checkpoints/text/c1-rl")
    plan = RetentionPlan(delete=[Held(other, "text", "c1-rl", 1, 3)])
    for store in (None, _store(tmp_path, f"file://{tmp_path / 'mine'}")):
        with pytest.raises(StoreError, match="checkpoint 7 is held in s3://elsewhere/prefix: set COPD_CHECKPOINT_URL"):
            apply_plan(None, 3, plan, store)  # the API is never called: nothing was marked deleted


def test_publish_drops_optimizer_state_for_none_and_uploads_under_the_run(tmp_path, monkeypatch):
    from contract.settings import get_settings
    from contract.spec import parse_spec
    from trainer.checkpoint import CheckpointInfo
    from worker.checkpoints import publish

    monkeypatch.setenv("COPD_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        folder = tmp_path / "data" / "runs" / "4" / "checkpoints" / "text" / "c1-rl"
        sha = _checkpoint(folder)
        spec = parse_spec({"name": "r", "experts": [{"name": "text", "domain": "builtin:arith"},
                                                    {"name": "video", "domain": "builtin:frames"}],
                           "checkpoints": {"optimizer": "none"}})
        store = _store(tmp_path, f"file://{tmp_path / 'shared'}")
        info, optimizer = publish(store, spec, CheckpointInfo("text", 1, 3, str(folder), sha, 1))
        assert optimizer is False and info.sha256 == manifest_sha(folder) != sha
        assert info.uri == f"file://{tmp_path / 'shared'}/runs/4/checkpoints/text/c1-rl"
        assert store.fetch("runs/4/checkpoints/text/c1-rl", tmp_path / "back") == info.sha256
        assert not (tmp_path / "back" / "optimizer.pt").exists()
        kept, optimizer = publish(None, spec.model_copy(update={"checkpoints": spec.checkpoints.model_copy(
            update={"optimizer": "last"})}), CheckpointInfo("text", 1, 3, str(folder), info.sha256, 1))
        assert kept.uri == str(folder) and kept.sha256 == info.sha256  # no store: the local path, as before
    finally:
        get_settings.cache_clear()

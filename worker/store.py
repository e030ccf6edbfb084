"""The checkpoint store: any fsspec URL (`COPD_CHECKPOINT_URL=s3://bucket/prefix`, `gs://…`, `file:///…`).

A unit writes its checkpoint locally and atomically (trainer.checkpoint), then uploads it here; a unit on
another host downloads what it needs into `<data_dir>/cache/checkpoints/<manifest sha256>/` (verified file by
file against the manifest) and links it into its run folder. The store mirrors the data dir:
`<url>/runs/<run>/checkpoints/<expert>/c<cycle>-<phase>/` and `<url>/runs/<run>/final/`.

An upload removes the remote manifest first and writes it last, so a reader never takes a folder whose
manifest is missing for complete; a reader that meets files changed under it fails its verification and
says so. Every call is bounded (COPD_STORE_TIMEOUT_S for S3): a store that is down is a StoreError naming
the URL and the operation, never a hang.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from contract.settings import Settings, get_settings
from trainer.ckptfiles import MANIFEST, OPTIMIZER_FILE, link_tree, manifest_sha, sha256_file

log = logging.getLogger("copd.worker")


class StoreError(RuntimeError):
    """The checkpoint store failed or is unreachable (one line: the URL, what was being done, the cause)."""


class NotInStore(StoreError):
    """The store has no (complete) checkpoint at this path."""


def storage_options(url: str, timeout_s: float) -> dict[str, Any]:
    """fsspec options that bound every request (S3: botocore's connect/read timeouts and two attempts)."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    if protocol in ("s3", "s3a"):
        return {"config_kwargs": {"connect_timeout": timeout_s, "read_timeout": timeout_s,
                                  "retries": {"max_attempts": 2, "mode": "standard"}}}
    return {}  # other protocols: their own defaults (and FSSPEC_<PROTOCOL>_<OPTION> variables)


class CheckpointStore:
    """One store URL; relative paths (`runs/3/checkpoints/text/c1-rl`) mirror the data dir."""

    def __init__(self, url: str, cache: Path, *, timeout_s: float = 60.0) -> None:
        import fsspec  # imported where a store is configured only

        self.url = url.rstrip("/")
        self.cache = Path(cache)
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **storage_options(self.url, timeout_s))
        except (ImportError, ValueError) as err:  # e.g. s3:// without s3fs installed
            raise StoreError(f"COPD_CHECKPOINT_URL={self.url}: {err} (S3 needs `pip install copd[s3]`)") from None
        self.root = self.root.rstrip("/")

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> "CheckpointStore | None":
        """The store named by COPD_CHECKPOINT_URL, or None (checkpoints stay in the data dir)."""
        settings = settings or get_settings()
        if not settings.checkpoint_url:
            return None
        return cls(settings.checkpoint_url, settings.checkpoint_cache, timeout_s=settings.store_timeout_s)

    def uri(self, rel: str) -> str:
        """The store URI of a relative path (what the API registers)."""
        return f"{self.url}/{rel.strip('/')}"

    def rel_of(self, uri: str) -> str | None:
        """The relative path of a URI of this store, None when it is not one."""
        prefix = self.url + "/"
        return uri[len(prefix):] if uri.startswith(prefix) else None

    def _p(self, rel: str) -> str:
        return f"{self.root}/{rel.strip('/')}"

    def _call(self, what: str, fn, *args, **kwargs):
        """One store operation; any failure becomes a StoreError naming the store and the operation."""
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError:
            raise
        except Exception as err:  # botocore, aiohttp, timeouts, permissions: all one kind to the caller
            raise StoreError(f"checkpoint store {self.url}: {what} failed: {type(err).__name__}: {err}") from err

    # ---- writing ---------------------------------------------------------------------------------
    def upload(self, local: Path, rel: str) -> str:
        """Upload a local checkpoint folder to `rel` (manifest last); returns its store URI."""
        local = Path(local)
        names = sorted(p.name for p in local.iterdir() if p.is_file() and p.name != MANIFEST)
        target = self._p(rel)
        try:
            self._call(f"removing the old manifest of {rel}", self.fs.rm, f"{target}/{MANIFEST}")
        except FileNotFoundError:
            pass
        self._call(f"creating {rel}", self.fs.makedirs, target, exist_ok=True)  # file://: a real folder
        for name in names:
            self._call(f"uploading {rel}/{name}", self.fs.put_file, str(local / name), f"{target}/{name}")
        self._call(f"uploading {rel}/{MANIFEST}", self.fs.put_file, str(local / MANIFEST), f"{target}/{MANIFEST}")
        return self.uri(rel)

    def put_manifest(self, local: Path, rel: str) -> None:
        """Replace the remote manifest with the local folder's (after files were dropped locally)."""
        self._call(f"uploading {rel}/{MANIFEST}", self.fs.put_file, str(Path(local) / MANIFEST),
                   f"{self._p(rel)}/{MANIFEST}")

    def drop_optimizer(self, rel: str) -> tuple[str, int] | None:
        """Remove the optimizer state of a stored checkpoint: the new manifest first (written as
        trainer.ckptfiles.drop_optimizer writes it locally: the same sha256), then the file. Returns its new
        (sha256, bytes), None when it held none."""
        manifest = self.manifest(rel)
        if manifest is None:
            return None
        files = json.loads(manifest)["files"]
        if OPTIMIZER_FILE not in files:
            return None
        del files[OPTIMIZER_FILE]
        text = json.dumps({"files": files}, indent=1, sort_keys=True)
        self._call(f"uploading {rel}/{MANIFEST}", self.fs.pipe_file, f"{self._p(rel)}/{MANIFEST}", text.encode())
        try:
            self._call(f"deleting {rel}/{OPTIMIZER_FILE}", self.fs.rm, f"{self._p(rel)}/{OPTIMIZER_FILE}")
        except FileNotFoundError:
            pass
        return hashlib.sha256(text.encode()).hexdigest(), sum(int(f["bytes"]) for f in files.values()) + len(text)

    def delete(self, rel: str) -> bool:
        """Delete a stored checkpoint folder (manifest first); False when there was none."""
        target = self._p(rel)
        try:
            self._call(f"deleting {rel}/{MANIFEST}", self.fs.rm, f"{target}/{MANIFEST}")
        except FileNotFoundError:
            pass
        try:
            self._call(f"deleting {rel}", self.fs.rm, target, recursive=True)
        except FileNotFoundError:
            return False
        return True

    def copy(self, src_rel: str, dst_rel: str) -> None:
        """Copy a stored checkpoint to another path inside the store (a fork's starting point), manifest last."""
        src, dst = self._p(src_rel), self._p(dst_rel)
        files = json.loads(self._manifest_or_raise(src_rel))["files"]
        self._call(f"creating {dst_rel}", self.fs.makedirs, dst, exist_ok=True)
        for name in sorted(files):
            self._call(f"copying {src_rel}/{name}", self.fs.copy, f"{src}/{name}", f"{dst}/{name}")
        self._call(f"copying {src_rel}/{MANIFEST}", self.fs.copy, f"{src}/{MANIFEST}", f"{dst}/{MANIFEST}")

    # ---- reading ---------------------------------------------------------------------------------
    def manifest(self, rel: str) -> bytes | None:
        """The stored manifest's bytes, None when the store has no complete checkpoint there."""
        try:
            return self._call(f"reading {rel}/{MANIFEST}", self.fs.cat_file, f"{self._p(rel)}/{MANIFEST}")
        except FileNotFoundError:
            return None

    def _manifest_or_raise(self, rel: str) -> bytes:
        manifest = self.manifest(rel)
        if manifest is None:
            raise NotInStore(f"checkpoint store {self.url} has no checkpoint at {rel}")
        return manifest

    def fetch(self, rel: str, dest: Path) -> str:
        """Make `dest` a verified copy of the stored checkpoint `rel`, through the cache; returns its sha256.

        Nothing is downloaded when `dest` already is that checkpoint, or the cache holds it."""
        dest = Path(dest)
        manifest = self._manifest_or_raise(rel)
        sha = hashlib.sha256(manifest).hexdigest()
        if (dest / MANIFEST).is_file() and manifest_sha(dest) == sha:
            return sha
        cached = self.cache / sha
        if not (cached / MANIFEST).is_file():
            self._download(rel, manifest, cached)
        link_tree(cached, dest)
        return sha

    def _download(self, rel: str, manifest: bytes, cached: Path) -> None:
        """Download every file of the manifest into a temporary folder, verify it, rename it into the cache."""
        files = json.loads(manifest)["files"]
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            for name, meta in sorted(files.items()):
                try:
                    self._call(f"downloading {rel}/{name}", self.fs.get_file, f"{self._p(rel)}/{name}", str(tmp / name))
                except FileNotFoundError:
                    raise NotInStore(f"checkpoint store {self.url}: {rel}/{name} is listed in its manifest "
                                     "but missing (an upload in progress, or a deletion)") from None
                if sha256_file(tmp / name) != meta["sha256"]:
                    raise StoreError(f"checkpoint store {self.url}: {rel}/{name} does not match its manifest's "
                                     "sha256 (changed while it was read?)")
            (tmp / MANIFEST).write_bytes(manifest)
            if cached.exists():  # another process of this host got it first
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.rename(cached)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("downloaded %s from %s (%d files)", rel, self.url, len(files))

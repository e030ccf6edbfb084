"""A checkpoint folder's files without torch: its manifest, its identity, verification, dropping its
optimizer state, and linking a copy into place (the join process and the CLI use these too)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
OPTIMIZER_FILE = "optimizer.pt"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_files(folder: Path) -> dict[str, dict[str, Any]]:
    """The manifest's {file name: {sha256, bytes}}; OSError / ValueError when there is none or it is broken."""
    files = json.loads((Path(folder) / MANIFEST).read_text())["files"]
    if not isinstance(files, dict):
        raise ValueError(f"{folder / MANIFEST}: 'files' is not a mapping")
    return files


def manifest_sha(folder: Path) -> str:
    """The checkpoint's identity: sha256 of its manifest."""
    return hashlib.sha256((Path(folder) / MANIFEST).read_bytes()).hexdigest()


def folder_bytes(folder: Path) -> int:
    """Total size a checkpoint's manifest accounts for (its files plus the manifest itself)."""
    folder = Path(folder)
    return sum(int(f["bytes"]) for f in manifest_files(folder).values()) + (folder / MANIFEST).stat().st_size


def verify_checkpoint(folder: Path) -> bool:
    """True when every file listed in the manifest is present with its recorded hash."""
    folder = Path(folder)
    try:
        files = manifest_files(folder)
    except (OSError, ValueError, KeyError):
        return False
    return all((folder / n).is_file() and sha256_file(folder / n) == f["sha256"] for n, f in files.items())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: Path, files: dict[str, dict[str, Any]]) -> tuple[str, int]:
    """Replace a folder's manifest atomically; returns (its sha256, the checkpoint's total bytes)."""
    folder = Path(folder)
    text = json.dumps({"files": files}, indent=1, sort_keys=True)
    tmp = folder / f".{MANIFEST}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)
    _fsync_dir(folder)
    return hashlib.sha256(text.encode()).hexdigest(), sum(int(v["bytes"]) for v in files.values()) + len(text)


def drop_optimizer(folder: Path) -> tuple[str, int] | None:
    """Remove a checkpoint's optimizer state; returns its new (sha256, bytes), None when it had none.

    The manifest is rewritten first, so a crash in between leaves a valid checkpoint and a stray file."""
    folder = Path(folder)
    files = manifest_files(folder)
    if OPTIMIZER_FILE not in files:
        return None
    del files[OPTIMIZER_FILE]
    out = write_manifest(folder, files)
    (folder / OPTIMIZER_FILE).unlink(missing_ok=True)
    return out


def has_optimizer(folder: Path) -> bool:
    try:
        return OPTIMIZER_FILE in manifest_files(folder)
    except (OSError, ValueError, KeyError):
        return False


def replace_folder(tmp: Path, dst: Path) -> None:
    """Move the finished folder `tmp` to `dst` in one rename; an existing `dst` (a unit that runs again
    replaces its own output) is moved aside first and removed after. The parent folder is synced."""
    if dst.exists() or dst.is_symlink():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        dst.rename(old)
        tmp.rename(dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(dst)
    _fsync_dir(dst.parent)


def link_tree(src: Path, dst: Path) -> None:
    """Put a copy of checkpoint folder `src` at `dst` atomically: hard links where the file system allows
    (no second copy on disk), else copies; an existing `dst` is replaced."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.link-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for p in src.iterdir():
            if p.is_file():
                try:
                    os.link(p, tmp / p.name)
                except OSError:
                    shutil.copy2(p, tmp / p.name)
        replace_folder(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

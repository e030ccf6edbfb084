"""Checkpoint I/O: safetensors weights + config + tokenizer + optimizer state, written atomically.

A checkpoint is a Hugging Face folder plus `optimizer.pt`, `trainer_state.json` and `manifest.json`
(sha256 and size of every file). It is written into a temporary sibling folder and renamed into place,
so a reader never sees half a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

# Torch-free folder operations (the join process and the CLI use them), re-exported here.
from trainer.ckptfiles import (  # noqa: F401
    MANIFEST,
    _fsync_dir,
    drop_optimizer,
    has_optimizer,
    manifest_sha,
    replace_folder,
    sha256_file,
    verify_checkpoint,
)
# A full disk: torch-free, so that a join process can tell it too (re-exported here, where checkpoints are written).
from trainer.diskspace import LOW_SPACE, DiskFull, disk_full_error  # noqa: F401


@dataclass(frozen=True)
class CheckpointInfo:
    """What a reporter is told about a written checkpoint."""

    expert: str
    cycle: int
    step: int
    uri: str
    sha256: str      # hash of the manifest: one value that identifies the whole checkpoint
    bytes: int
    final: bool = False


def save_checkpoint(folder: Path, model, tokenizer, optimizer=None, state: dict[str, Any] | None = None) -> tuple[str, int]:
    """Write a checkpoint folder atomically; returns (manifest sha256, total bytes).

    On any failure the temporary folder is removed and an existing checkpoint at `folder` stays as it was;
    a full disk raises DiskFull naming the folder.
    """
    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")

    return write_checkpoint(folder, fill, state)


def write_checkpoint(folder: Path, fill: Callable[[Path], None], state: dict[str, Any] | None = None) -> tuple[str, int]:
    """Write a checkpoint folder atomically from `fill(tmp)` (which writes the model's files into `tmp`);
    adds trainer_state.json and the manifest; returns (manifest sha256, total bytes). See save_checkpoint."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        fill(tmp)
        files, manifest = _seal(tmp, state)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if (full := disk_full_error(err, folder)) is not None and full is not err:
            raise full from err
        raise
    replace_folder(tmp, folder)  # a unit that runs again replaces its own output
    total = sum(f["bytes"] for f in files.values()) + len(manifest)
    return hashlib.sha256(manifest.encode()).hexdigest(), total


def _seal(tmp: Path, state: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    (tmp / "trainer_state.json").write_text(json.dumps(state or {}, indent=1, sort_keys=True))
    files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir()) if p.is_file()}
    manifest = json.dumps({"files": files}, indent=1, sort_keys=True)
    (tmp / MANIFEST).write_text(manifest)
    for p in tmp.iterdir():  # durable before it becomes visible
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    return files, manifest






def read_state(folder: Path) -> dict[str, Any]:
    """The trainer_state.json of a checkpoint (step, cycle, phase, …)."""
    return json.loads((Path(folder) / "trainer_state.json").read_text())


def info_dict(info: CheckpointInfo) -> dict[str, Any]:
    return asdict(info)

"""A full disk while a checkpoint is written: a clear error naming the folder, no partial files left, the
previous checkpoint intact (and the same folder's old contents too)."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import torch

from trainer import checkpoint, diskspace
from trainer.checkpoint import DiskFull, save_checkpoint, verify_checkpoint


def _model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64)
    model = LlamaForCausalLM(cfg)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("how", ["oserror", "torch"])
def test_a_full_disk_is_named_and_leaves_nothing_behind(tmp_path, monkeypatch, how) -> None:
    model, opt = _model()
    root = tmp_path / "checkpoints" / "text"
    save_checkpoint(root / "c1-rl", model, None, opt, {"step": 2})
    save_checkpoint(root / "c1-opd", model, None, opt, {"step": 3})
    before = (root / "c1-opd" / checkpoint.MANIFEST).read_text()

    def full(*_a, **_k):
        if how == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing "
                           "file data/0: file write failed")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    if how == "torch":  # torch's error says nothing of ENOSPC: the free space decides
        monkeypatch.setattr(diskspace, "LOW_SPACE", 2**62)
    for target in ("c2-rl", "c1-opd"):  # a new checkpoint, and a unit re-run over its old output
        with pytest.raises(DiskFull) as caught:
            save_checkpoint(root / target, model, None, opt, {"step": 5})
        assert str(caught.value) == f"no space left on device at {root / target}"
        assert caught.value.errno == errno.ENOSPC
        assert _leftovers(root) == []  # no temporary folder
    assert not (root / "c2-rl").exists()
    assert verify_checkpoint(root / "c1-rl") and verify_checkpoint(root / "c1-opd")
    assert (root / "c1-opd" / checkpoint.MANIFEST).read_text() == before


def test_other_errors_are_not_called_a_full_disk(tmp_path, monkeypatch) -> None:
    model, opt = _model()

    def broken(*_a, **_k):
        raise RuntimeError("file write failed")  # plenty of space: not a full disk

    monkeypatch.setattr(checkpoint.torch, "save", broken)
    with pytest.raises(RuntimeError) as caught:
        save_checkpoint(tmp_path / "c1-rl", model, None, opt)
    assert not isinstance(caught.value, DiskFull)
    assert os.listdir(tmp_path) == []


@pytest.mark.chaos
def test_a_really_full_disk(tmp_path) -> None:
    """A 96 KiB tmpfs: the second checkpoint does not fit (needs root and mount; skipped otherwise)."""
    mnt = Path(f"/tmp/copd-full-{uuid.uuid4().hex[:8]}")
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        mnt.rmdir()
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip()[:100]})")
    try:
        model, opt = _model()
        sha, size = save_checkpoint(mnt / "c1-rl", model, None, opt)
        assert size < 64 * 2**10  # the first fits; a second one does not
        with pytest.raises(DiskFull) as caught:
            save_checkpoint(mnt / "c1-opd", model, None, opt)
        assert str(caught.value) == f"no space left on device at {mnt / 'c1-opd'}"
        assert sorted(os.listdir(mnt)) == ["c1-rl"] and verify_checkpoint(mnt / "c1-rl")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        mnt.rmdir()

"""Merging checkpoints one tensor at a time, streamed from their safetensors files.

The experts are never loaded as models: for each parameter name the K experts' values (and the base's, for
the delta methods) are read from disk, merged by `trainer.algos.merge_tensor`, and added to the output shard,
which is written out once it passes `shard_bytes` (1 GiB). Peak memory is about two output shards (the shard
and its serialized bytes) plus a few float32 copies of the largest single tensor for each of the K experts —
bounded by the shard size and the largest tensor, not by K models (bench/merge_memory.py measures it).

Tensors are read with plain positioned reads into a fresh buffer, not through a memory map, so that the
pages of K source files do not stay mapped into the process for the whole merge.
"""

from __future__ import annotations

import json
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save_file

from contract.spec import MergeSpec
from trainer.algos import merge_tensor
from trainer.checkpoint import write_checkpoint

SAFETENSORS_INDEX = "model.safetensors.index.json"
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
# Files of a checkpoint folder that are not the model (its weights are written by the merge).
_NOT_COPIED = {"optimizer.pt", "trainer_state.json", "manifest.json", SAFETENSORS_INDEX}


class MergeError(ValueError):
    """The checkpoints cannot be merged as asked (one line naming what is wrong)."""


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lies in a safetensors file."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int   # absolute byte offsets in the file
    end: int


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a Hugging Face folder (one file, or the shards its index names)."""
    folder = Path(folder)
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / s for s in shards]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise MergeError(f"{folder}: no safetensors weights (a merge reads model.safetensors or its shards)")
    return files


def tensor_index(folder: Path) -> dict[str, TensorRef]:
    """Every tensor of a folder's safetensors files, by name, from the files' headers only."""
    out: dict[str, TensorRef] = {}
    for path in weight_files(folder):
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            if meta["dtype"] not in _DTYPES:
                raise MergeError(f"{path}: tensor {name} has dtype {meta['dtype']}, which the merge does not read")
            lo, hi = meta["data_offsets"]
            out[name] = TensorRef(path, _DTYPES[meta["dtype"]], tuple(meta["shape"]), 8 + n + lo, 8 + n + hi)
    return out


def read_tensor(ref: TensorRef) -> torch.Tensor:
    """One tensor, read into its own buffer (no memory map is kept)."""
    buf = bytearray(ref.end - ref.start)
    with open(ref.file, "rb") as f:
        f.seek(ref.start)
        f.readinto(buf)
    if not buf:
        return torch.empty(ref.shape, dtype=ref.dtype)
    return torch.frombuffer(buf, dtype=ref.dtype).reshape(ref.shape)


def _release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps large freed blocks otherwise, and RSS only grows)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _load_libc()


def _generator(seed: int, name: str) -> torch.Generator:
    """DARE's drop of one tensor: seeded by the run's seed and the tensor's name (order-independent)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)


def merge_folders(sources: Sequence[Path], out: Path, weights: Sequence[float], merge: MergeSpec, *,
                  base: Path | None = None, seed: int = 0, state: dict[str, Any] | None = None,
                  shard_bytes: int = 2**30) -> tuple[str, int]:
    """Merge checkpoint folders tensor by tensor into the checkpoint folder `out` (written atomically, with
    config and tokenizer files of the first source); returns (manifest sha256, bytes)."""
    if not sources:
        raise MergeError("a merge needs at least one checkpoint")
    if len(weights) != len(sources):
        raise MergeError(f"got {len(weights)} weights for {len(sources)} checkpoints")
    indexes = [tensor_index(s) for s in sources]
    names = list(indexes[0])
    for src, idx in zip(sources[1:], indexes[1:]):
        if set(idx) != set(names):
            missing = sorted(set(names) ^ set(idx))[:3]
            raise MergeError(f"{src}: its tensors differ from {sources[0]}'s (e.g. {', '.join(missing)})")
    base_index = None
    if merge.method != "average":
        if base is None or not Path(base).is_dir():
            raise MergeError(f"merge.method {merge.method}: needs the base model's weights in a local folder "
                             f"(got {base})")
        base_index = tensor_index(Path(base))
        lacking = [n for n in names if n not in base_index]
        if lacking:
            raise MergeError(f"{base}: the base model has no tensor {lacking[0]} (is it the experts' base?)")

    def fill(tmp: Path) -> None:
        for p in Path(sources[0]).iterdir():
            if p.is_file() and p.suffix != ".safetensors" and p.name not in _NOT_COPIED:
                shutil.copy2(p, tmp / p.name)
        _write_merged(tmp, names, indexes, base_index, weights, merge, seed, shard_bytes)

    return write_checkpoint(out, fill, state)


def _write_merged(tmp: Path, names: list[str], indexes: list[dict[str, TensorRef]],
                  base_index: dict[str, TensorRef] | None, weights: Sequence[float], merge: MergeSpec,
                  seed: int, shard_bytes: int) -> None:
    shards: list[tuple[Path, list[str]]] = []
    pending: dict[str, torch.Tensor] = {}
    size = 0
    total = 0

    def flush() -> None:
        nonlocal pending, size
        path = tmp / f".shard-{len(shards):05d}.safetensors"
        save_file(pending, str(path), metadata={"format": "pt"})
        shards.append((path, list(pending)))
        pending, size = {}, 0
        _release_freed_memory()

    for name in names:
        tensors = [read_tensor(idx[name]) for idx in indexes]
        base_t = read_tensor(base_index[name]) if base_index is not None else None
        try:
            out = merge_tensor(tensors, weights, merge.method, base_t, density=merge.density, scale=merge.scale,
                               sign_method=merge.sign_method, generator=_generator(seed, name))
        except ValueError as err:
            raise MergeError(f"tensor {name}: {err}") from None
        del tensors, base_t
        _release_freed_memory()
        pending[name] = out.contiguous()
        nbytes = out.numel() * out.element_size()
        size += nbytes
        total += nbytes
        if size >= shard_bytes:
            flush()
    if pending or not shards:
        flush()
    if len(shards) == 1:
        shards[0][0].rename(tmp / "model.safetensors")
        return
    weight_map = {}
    for i, (path, keys) in enumerate(shards, start=1):
        final = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        path.rename(tmp / final)
        weight_map.update({k: final for k in keys})
    (tmp / SAFETENSORS_INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                    indent=1, sort_keys=True))

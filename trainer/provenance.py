"""Where a result came from: library versions, the git commit, the base model's hash and the machine.

Every run folder gets `provenance.json` (trainer/local.py), `copd train` prints its one-line form under the
accuracy table, `copd compare` puts it in the report, and the builtin base model records the versions it was
built with in its `warmstart.json` (trainer/models.py). A number that does not reproduce is then traced to
a changed library, commit, base model or machine instead of guessed at. (The same code, libraries and recipe
on another CPU can give other numbers: torch picks its float kernels by the CPU's instruction set, and a
tiny model's warm start and RL amplify the rounding. `machine()` records what the kernels depend on.)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("torch", "transformers", "tokenizers", "safetensors", "copd")
# A base model's identity: its weights and the files that turn text into ids (not its README or metadata).
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def versions() -> dict[str, str]:
    """Python's and each installed library's version ('-' where one is not installed).

    >>> set(versions()) >= {"python", "torch", "transformers"}
    True
    """
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def machine() -> dict[str, str]:
    """The CPU (its model name), the instruction set torch's CPU kernels use, and the first GPU's name when
    there is one: what float rounding depends on beyond the library versions.

    >>> set(machine()) >= {"cpu", "cpu_capability"}
    True
    """
    cpu = platform.processor() or platform.machine() or "-"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {"cpu": cpu, "cpu_capability": "-"}
    try:
        import torch

        out["cpu_capability"] = str(torch.backends.cpu.get_cpu_capability())
        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - torch missing or too old: the CPU's name is still worth recording
        pass
    return out


def git_commit(root: Path = ROOT) -> str:
    """The commit the code runs from, '+dirty' when tracked files differ from it; '-' outside a git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "-"
    return head + ("+dirty" if dirty else "") if head else "-"


def model_hash(folder: Path | str) -> str:
    """sha256 (first 16 hex digits) over a local model folder's weights, config and tokenizer files; '-' for a
    hub id or a folder without them. Two folders with the same hash load the same model."""
    folder = Path(folder)
    files = [folder / n for n in MODEL_FILES if (folder / n).is_file()]
    if not any(f.name.endswith(".safetensors") for f in files):
        files += sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return "-"
    h = hashlib.sha256()
    for f in sorted(set(files)):
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def provenance(base_model: str, base_folder: Path | str | None) -> dict[str, Any]:
    """What `provenance.json` holds: versions, commit, the spec's base model, the loaded one's hash and the
    machine."""
    return {"versions": versions(), "commit": git_commit(), "base_model": base_model,
            "base_folder": str(base_folder) if base_folder is not None else None,
            "base_hash": model_hash(base_folder) if base_folder is not None else "-", "machine": machine()}


def one_line(p: dict[str, Any]) -> str:
    """A provenance record as one line, for a summary or a report.

    >>> one_line({"versions": {"torch": "2.13.0", "transformers": "5.24.0"}, "commit": "abc", "base_hash": "f00"})
    'torch 2.13.0, transformers 5.24.0, commit abc, base model f00'
    >>> one_line({"versions": {"torch": "2.13.0"}, "commit": "abc", "base_hash": "f00",
    ...           "machine": {"cpu": "Intel Xeon", "cpu_capability": "AVX512", "gpu": "NVIDIA H200"}})
    'torch 2.13.0, commit abc, base model f00, cpu AVX512, gpu NVIDIA H200'
    """
    libs = ", ".join(f"{k} {v}" for k, v in p.get("versions", {}).items() if k in ("torch", "transformers"))
    line = f"{libs}, commit {p.get('commit', '-')}, base model {p.get('base_hash', '-')}"
    m = p.get("machine") or {}  # provenance.json written before the machine was recorded has none
    if m.get("cpu_capability"):
        line += f", cpu {m['cpu_capability']}"
    if m.get("gpu"):
        line += f", gpu {m['gpu']}"
    return line


def write(out: Path, base_model: str, base_folder: Path | str | None) -> dict[str, Any]:
    """Write OUT/provenance.json (whole, via a temporary file) and return it."""
    p = provenance(base_model, base_folder)
    tmp = Path(out) / ".provenance.json.tmp"
    tmp.write_text(json.dumps(p, indent=1) + "\n")
    tmp.replace(Path(out) / "provenance.json")
    return p

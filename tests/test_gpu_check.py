"""bench/gpu_check.sh: the script runs end to end (tiny size on the CPU); the real check where a GPU is present."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_check(*args: str, timeout: int) -> dict:
    env = {**os.environ, "COPD_TORCH_THREADS": "1"}
    out = subprocess.run(["bash", "bench/gpu_check.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "losses finite: yes" in out.stdout
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("json: "))[6:])


def test_gpu_check_script_runs_tiny_on_cpu():
    got = run_check("--size", "tiny", "--dtype", "fp32", "--engine", "hf", timeout=300)
    assert got["steps"] == 6 and got["losses_finite"]
    assert got["rollout_tokens_per_s"] > 0 and got["train_tokens_per_s"] > 0 and got["peak_memory_gb"] > 0
    assert got["logp_gap_mean"] < 1e-4  # the HF engine samples with the trainer's own forward


def test_gpu_check_script_runs_tiny_vl_on_cpu():
    got = run_check("--vl", "--size", "tiny", "--dtype", "fp32", timeout=300)
    assert got["steps"] == 6 and got["losses_finite"] and got["logp_gap_mean"] < 1e-4
    assert set(got["merged_acc"]) == {"acc/image", "acc/video"}


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_check_two_billion_vl_bf16():
    got = run_check("--vl", timeout=560)
    assert got["device"] != "no GPU (CPU)" and got["losses_finite"]


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_check_half_billion_bf16():
    got = run_check(timeout=480)
    assert got["device"] != "no GPU (CPU)" and got["losses_finite"]


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_check_half_billion_vllm():
    pytest.importorskip("vllm", reason="the vllm wheel is not installed here (docs/vllm.md)")
    got = run_check("--engine", "vllm", timeout=480)
    assert got["losses_finite"] and got["logp_gap_mean"] < 0.1  # bf16 engine vs bf16 trainer: small, not zero


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_check_two_billion_vl_vllm():
    pytest.importorskip("vllm", reason="the vllm wheel is not installed here (docs/vllm.md)")
    got = run_check("--vl", "--engine", "vllm", timeout=560)
    assert got["losses_finite"] and got["logp_gap_mean"] < 0.1  # bf16 engine vs bf16 trainer: small, not zero
    assert set(got["merged_acc"]) == {"acc/image", "acc/video"}

#!/usr/bin/env bash
# GPU check (issue 8): one CoPD cycle of two experts on a ~0.5B random Qwen2, bf16, HF engine, no network.
# Prints rollout and training tokens/s, peak memory and whether the losses are finite; < 8 min on one H100.
#   bench/gpu_check.sh                   # the check
#   bench/gpu_check.sh --engine vllm     # the same with vLLM rollouts (pip install vllm first: docs/vllm.md)
#   bench/gpu_check.sh --vl              # a ~2B random Qwen2-VL: an image and a video expert (docs/vlm.md)
#   bench/gpu_check.sh --vl --engine vllm   # the same with vLLM rollouts, images as multi_modal_data
# Extra arguments go to `python -m bench.gpu_check` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_PROGRESS_BARS=1
if python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
  echo "note: no CUDA GPU visible; running on the CPU (use --size tiny --dtype fp32 for a quick look)" >&2
fi
exec python -m bench.gpu_check "$@"

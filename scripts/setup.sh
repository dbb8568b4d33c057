#!/usr/bin/env bash
# Create .venv with the project and its test tools, on a fresh machine. Idempotent: a second run
# only installs what changed. Set RLHF_VENV to use another location.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${RLHF_VENV:-.venv}"
python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install -q --upgrade pip
# Pin torch first: a bare `torch` requirement may pull a newer multi-GB CUDA build. 2.13.0 is the
# release the project is tested with on CPU; GPU machines keep the torch they carry.
python -c 'import torch' 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e '.[dev]'
echo "environment ready: $venv (activate with: . $venv/bin/activate)"

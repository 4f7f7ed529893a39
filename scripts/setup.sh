#!/usr/bin/env bash
# Set up .venv with actlab (editable) and its dependencies. Idempotent: re-runs only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.actlab-deps
want=$(cat settings.ini setup.py | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! .venv/bin/python -c "import actlab" 2>/dev/null; then
  echo "== installing dependencies"
  .venv/bin/python -m pip install -q --upgrade pip wheel
  # A CPU machine must get the local CPU wheel first: any other torch requirement pulls GBs of CUDA packages.
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q torch==2.13.0
  fi
  .venv/bin/python -m pip install -q -e ".[dev,ray]"  # ray: the optional engine, so its tests run
  echo "$want" > "$stamp"
fi
.venv/bin/python scripts/jupyter_hooks.py --install > /dev/null  # JupyterLab saves nbs/*.ipynb without outputs
echo "== environment ready: $(.venv/bin/python -c 'import torch, transformer_lens, sae_lens; print("torch", torch.__version__, "| sae-lens", sae_lens.__version__)')"

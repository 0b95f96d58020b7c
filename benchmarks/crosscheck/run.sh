#!/usr/bin/env bash
# Build (once) the AdapterHub venv and run the AdapterHub side of the cross-check.
#
#   benchmarks/crosscheck/run.sh OUT_DIR [adapterhub_side.py options...]
#
# The venv lives outside the repository (nothing to gitignore):
#   $ADAPTER4REC_CROSSCHECK_VENV, default ~/.cache/adapter4rec/crosscheck-venv
# It holds adapters==1.3.0, transformers~=4.57.6 and the CPU torch (the torch==2.13.0+cpu wheel
# this machine's pip finds; PyPI's plain torch wheel for Linux is the multi-GB CUDA build, so the
# CPU wheel is pinned by version and checked after the install).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${ADAPTER4REC_CROSSCHECK_VENV:-$HOME/.cache/adapter4rec/crosscheck-venv}"
PYTHON="${PYTHON:-python3.11}"
TORCH="${CROSSCHECK_TORCH:-torch==2.13.0}"
REQS=("adapters==1.3.0" "transformers~=4.57.6" "$TORCH" "safetensors" "numpy")

if [[ ! -f "$VENV/.complete" ]]; then
    echo "crosscheck: creating $VENV" >&2
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "${REQS[@]}"
    "$VENV/bin/python" - <<'PY'
import torch
assert torch.version.cuda is None, f"the cross-check venv got a CUDA torch ({torch.__version__}); install the CPU wheel"
PY
    "$VENV/bin/pip" freeze > "$VENV/.complete"
fi
exec "$VENV/bin/python" "$HERE/adapterhub_side.py" "$@"

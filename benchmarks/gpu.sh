#!/usr/bin/env bash
# The GPU rows of issue 15 (benchmarks/gpu.py) on one H100/H200 with no network, in under 4 minutes
# with the installs. Writes gpu.json and gpu.md to $OUT (else benchmarks/gpu-results), row by row.
#
#   bash benchmarks/gpu.sh [gpu.py args]      e.g.  bash benchmarks/gpu.sh --dry   (CPU, seconds)
#
# Needs there: python3 with torch, transformers and peft (the GPU image has them). adapter4rec runs
# from this checkout (PYTHONPATH: nothing to build). Wheels in benchmarks/wheels/ (ignored by git,
# as every *.whl) are installed first with pip --no-index into $A4R_SITE: lmdb is needed (the ViT
# rows' image store; without it they are skipped), transformers 5.24.0 and peft 0.21.2 are optional
# (the versions the suite runs on; the GPU image has transformers 5.17). On a machine with network:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d benchmarks/wheels lmdb==3.0.0 transformers==5.24.0 peft==0.21.2
# (3.12: the GPU image's python3; match yours). With the device tool: carry ["benchmarks/wheels"]. Data and model configs: $A4R_SHARED, else shared/ in
# the checkout, else ../shared -- a copied tree carries only what is inside it, so copy there first:
#   mkdir -p shared/datasets shared/pretrained_configs
#   cp -r ../shared/datasets/amazon-scientific shared/datasets/
#   cp -r ../shared/pretrained_configs/{bert-base-uncased,vit-base-patch16-224} shared/pretrained_configs/
set -euo pipefail
cd "$(dirname "$0")/.."
. benchmarks/gpu_env.sh  # PY, PYTHONPATH, the wheels, A4R_SHARED
"$PY" -c "import lmdb" 2>/dev/null || echo "gpu.sh: lmdb not importable (no wheel in $WHEELS): ViT rows skipped" >&2
# gpu.py stops starting rows at --budget-s (200 s); this bounds the whole run whatever happens
exec timeout "${A4R_GPU_TIMEOUT:-230}" "$PY" benchmarks/gpu.py "$@"

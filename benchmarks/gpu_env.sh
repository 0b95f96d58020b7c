# Sourced by the GPU scripts (benchmarks/gpu.sh, scripts/study_scientific_gpu.sh) on a GPU machine
# with no network: PY (python3), adapter4rec from this checkout on PYTHONPATH (nothing to build),
# the wheels in benchmarks/wheels/ (ignored by git, as every *.whl) installed with pip --no-index
# into $A4R_SITE, and A4R_SHARED (the shared datasets and model configs): $A4R_SHARED, else shared/
# in the checkout, else ../shared. Run from the checkout's root.
PY=${PYTHON:-python3}
SITE=${A4R_SITE:-/tmp/a4r-site}
WHEELS=${A4R_WHEELS:-benchmarks/wheels}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if ((${#wheels[@]})); then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" ||
    echo "gpu_env.sh: installing ${wheels[*]} failed (another Python version's wheel?); going on without" >&2
  export PYTHONPATH="$PYTHONPATH:$SITE"  # after the checkout: an adapter4rec wheel never shadows it
fi
shopt -u nullglob
if [ -z "${A4R_SHARED:-}" ]; then
  if [ -d shared/datasets ]; then A4R_SHARED=$PWD/shared; else A4R_SHARED=$(cd .. && pwd)/shared; fi
fi
export A4R_SHARED PYTHONUNBUFFERED=1

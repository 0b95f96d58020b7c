#!/usr/bin/env bash
# The study's GPU rows (issue 17; suites/study_scientific_gpu.yaml): BERT-base items (random
# weights), a 3-epoch full fine-tuning source on Amazon Instrument, then houlsby, full and the
# cached side network (iisan) on all of Amazon Scientific, 3 epochs each: the time per epoch,
# the peak memory and the metrics after 3 epochs (not converged), on the device named in
# device.txt. A few minutes on one H100/H200 (bf16); resumable like every suite.
#
#   bash scripts/study_scientific_gpu.sh            # on the GPU machine; results into $OUT
#   bash scripts/study_scientific_gpu.sh --smoke    # tiny models and synthetic data (CPU, a minute)
#
# Needs there: python3 with torch, transformers, peft, pandas, pyyaml, tqdm (the GPU image has
# them); benchmarks/gpu_env.sh puts this checkout on PYTHONPATH and installs benchmarks/wheels/.
# The data and bert-base-uncased's config travel in shared/ of the checkout (see benchmarks/gpu.sh):
#   mkdir -p shared/datasets shared/pretrained_configs
#   cp -r ../shared/datasets/amazon-{instrument,scientific} shared/datasets/
#   cp -r ../shared/pretrained_configs/bert-base-uncased shared/pretrained_configs/
# Writes to ${OUT:-runs/study_gpu-results}: report.md, runs.csv (+ .variants, .pairs), suite.log,
# device.txt (at most 8 files: what the device tool brings back).
set -euo pipefail
cd "$(dirname "$0")/.."
. benchmarks/gpu_env.sh  # PY, PYTHONPATH, the wheels, A4R_SHARED
RESULTS=${OUT:-runs/study_gpu-results}
RUNS=${A4R_STUDY_GPU_RUNS:-runs/study_gpu}
mkdir -p "$RESULTS"
"$PY" - > "$RESULTS/device.txt" <<'PY'
import platform, torch, transformers
dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})"
print(f"device: {dev}; torch {torch.__version__}, CUDA {torch.version.cuda}, transformers {transformers.__version__}")
PY
cat "$RESULTS/device.txt"
"$PY" -m adapter4rec.cli suite run study_scientific_gpu --output "$RUNS" "$@" 2>&1 | tee "$RESULTS/suite.log"
"$PY" -m adapter4rec.cli report "$RUNS" --markdown "$RESULTS/report.md" --csv "$RESULTS/runs.csv" > /dev/null
echo "wrote $RESULTS/report.md (metrics after 3 epochs, not converged; epoch_s and peak memory per run)"

#!/usr/bin/env bash
# The study on real data (issue 17): Amazon Instrument (source) -> Amazon Scientific (target),
# all-MiniLM-L6-v2 items. Every step is resumable: run the script again and finished runs are
# skipped, interrupted ones resumed from their last checkpoint. About 20+ CPU-hours in all on a
# 2-core CPU (docs/results/scientific/README.md); on a GPU, a few hours.
#   bash scripts/study_scientific.sh            # everything, the most informative runs first
#   bash scripts/study_scientific.sh report     # only the report of what has finished
#   git add $(bash scripts/study_scientific.sh finished)   # keep the finished runs in git
#   JOBS=2 bash scripts/study_scientific.sh     # 2 runs at a time (2 GPUs, or 2 cores of a quiet CPU)
#   LONG_RUNS=1 bash scripts/study_scientific.sh  # scratch at 100% too (about 5 h a seed on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
export ADAPTER4REC_DATASETS=${ADAPTER4REC_DATASETS:-../shared/datasets}
OUT=docs/results/scientific
CHEAP=suites/study_scientific_cheap.yaml
HEAVY=suites/study_scientific_heavy.yaml
JOBS=${JOBS:-1}
step() { echo "== $(date '+%F %T') $*"; "$@" --jobs "$JOBS" || echo "== (not finished: run the script again to resume)"; }

if [ "${1:-}" = finished ]; then  # what to commit: finished runs, the links to them, the suites' records
  find runs/study -name metrics.json -not -path '*/checkpoints/*' -printf '%h\n' | sort
  find runs/study -type l | sort
  find runs/study -name suite.json | sort  # what tells a suite's selection runs apart
  exit 0
fi
if [ "${1:-}" != report ]; then
  # the source, the cached runs at every fraction (minutes each) and one seed of scratch at 10%
  step adapter4rec suite run $CHEAP --only method=iisan --only 'method=frozen*' \
    --only 'users=0.1,method=scratch,seed=42'
  step adapter4rec suite run $HEAVY --only method=houlsby --only method=full  # selection, 10%, 25%, BCE
  step adapter4rec suite run $CHEAP --only 'users=0.1'                        # scratch seeds 43, 44
  step adapter4rec suite run $CHEAP --only 'users=0.25'                       # scratch at 25%
  step adapter4rec suite run $HEAVY --only method=lora --only method=layernorm --only method=pfeiffer
  step adapter4rec suite run $HEAVY                                           # kadapter, compacter
  # scratch at 100%: about 5 hours a seed on 2 cores, longer than a working session, whose work
  # tree is laid anew; its checkpoint with the optimizer (270 MB) cannot be kept in git. So only
  # where runs outlive a session (a GPU, a machine of one's own): LONG_RUNS=1
  if [ "${LONG_RUNS:-0}" = 1 ]; then
    step adapter4rec suite run $CHEAP --only 'users=1,method=scratch,seed=42'  # hours: one seed first
    step adapter4rec suite run $CHEAP                                           # seeds 43, 44
  fi
fi
mkdir -p $OUT/plots
# the floor the table is read against: the most-popular ranking at each fraction (seconds; the
# cheap suite's settings, so only the method tells it apart in the report)
for f in 0.1 0.25 1; do
  [ -f runs/study/popularity/users=$f/metrics.json ] || adapter4rec popularity \
    --config configs/adapt/scientific_base.yaml --set data.user_fraction=$f --set train.objective=inbatch \
    --set train.patience=3 --set train.min_delta=0.001 --set train.epochs=30 --set train.progress=false \
    --output runs/study/popularity/users=$f
done
# the main runs (not the selection runs); pairs: each method against full, transfer against scratch
# and every planned run not finished yet, with its progress (docs/results/scientific/README.md: budget)
shopt -s nullglob
# do adapters beat frozen features? each adapter (and the side network) against frozen at each
# fraction, once both have finished (a --pair that matches nothing is an error)
C=runs/study/study_scientific_cheap H=runs/study/study_scientific_heavy pairs=()
for f in 0.1 0.25 1; do
  iisan=($C/users=$f,method=iisan,seed=*/metrics.json)
  # against both frozen baselines: both towers frozen (frozen), the user tower tuned (frozen_items)
  for base in frozen frozen_items; do
    fr=($C/users=$f,method=$base,seed=*/metrics.json)
    ((${#fr[@]})) || continue
    for m in houlsby pfeiffer lora layernorm kadapter compacter; do
      [ -f "$H/method=$m,users=$f/metrics.json" ] && pairs+=(--pair "method=$m,users=$f:users=$f,method=$base,seed=*")
    done
    ((${#iisan[@]})) && pairs+=(--pair "users=$f,method=iisan,seed=*:users=$f,method=$base,seed=*")
    # do frozen features beat the most-popular ranking?
    pairs+=(--pair "users=$f,method=$base,seed=*:*popularity/users=$f")
  done
  ((${#iisan[@]})) && pairs+=(--pair "users=$f,method=iisan,seed=*:*popularity/users=$f")
done
# which placement matters? each other adapter against houlsby (after attention and FFN) at the
# same fraction: one FFN adapter (pfeiffer), a side network beside the layers (kadapter), LoRA in
# attention, compacter's low-rank adapters in houlsby's places
for f in 0.1 0.25; do
  [ -f "$H/method=houlsby,users=$f/metrics.json" ] || continue
  for m in pfeiffer kadapter lora compacter; do
    [ -f "$H/method=$m,users=$f/metrics.json" ] && pairs+=(--pair "method=$m,users=$f:method=houlsby,users=$f")
  done
done
# did the grid hold compacter back? its config file's rate (4e-3) against its selected run at 10%
[ -f "$H/method=compacter,lr_peft=4e-3,users=0.1/metrics.json" ] && [ -f "$H/method=compacter,users=0.1/metrics.json" ] \
  && pairs+=(--pair "method=compacter,lr_peft=4e-3,users=0.1:method=compacter,users=0.1")
# does the objective matter? each BCE run against its method's default-objective run at 10% (the
# same learning rate: the BCE runs take their method's selected one); no automatic pair crosses
# objectives
for m in houlsby full; do
  [ -f "$H/method=$m,objective=bce,users=0.1/metrics.json" ] && [ -f "$H/method=$m,users=0.1/metrics.json" ] \
    && pairs+=(--pair "method=$m,objective=bce,users=0.1:method=$m,users=0.1")
done
adapter4rec report runs/study/study_scientific_cheap/users=* runs/study/study_scientific_heavy/method=* \
  runs/study/pretrain_instrument runs/study/popularity --suite $CHEAP --suite $HEAVY \
  --why 'users=1,method=scratch:about 5 hours a seed on 2 cores, longer than a working session (LONG_RUNS=1 runs it)' \
  --why '*:not reached yet (the runs go in the order of scripts/study_scientific.sh)' \
  "${pairs[@]}" --markdown $OUT/report.md --csv $OUT/runs.csv --plots $OUT/plots

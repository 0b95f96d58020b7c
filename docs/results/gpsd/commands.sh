#!/bin/sh
# the exact commands of docs/results/gpsd/ (run from the repository root)
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 ADAPTER4REC_DATASETS=../shared/datasets
. .venv/bin/activate
date -u +"start %FT%TZ"
/usr/bin/time -f "scientific: %e s wall" adapter4rec suite run suites/gpsd.yaml --only data=scientific
/usr/bin/time -f "scaling small: %e s wall" adapter4rec suite run suites/gpsd_scaling.yaml --only size=d16_l1 --only size=d32_l2
/usr/bin/time -f "instrument: %e s wall" adapter4rec suite run suites/gpsd.yaml --only data=instrument
/usr/bin/time -f "scaling d128: %e s wall" adapter4rec suite run suites/gpsd_scaling.yaml --only size=d128_l2
date -u +"end %FT%TZ"
/usr/bin/time -f "scaling d256: %e s wall" adapter4rec suite run suites/gpsd_scaling.yaml --only size=d256_l1
date -u +"end %FT%TZ"
/usr/bin/time -f "scaling d256_l3: %e s wall" adapter4rec suite run suites/gpsd_scaling.yaml --only size=d256_l3
date -u +"end %FT%TZ"

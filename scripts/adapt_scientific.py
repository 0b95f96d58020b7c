"""Adapt the Instrument-pretrained recommender to Amazon Scientific with every PEFT method.

    python scripts/adapt_scientific.py                          # every method, runs/adapt_scientific/<method>
    python scripts/adapt_scientific.py --methods houlsby lora   # some of them
    python scripts/adapt_scientific.py --set train.epochs=20    # any config key, in every run
    python scripts/adapt_scientific.py --dry-run                # check the configs, list the runs
    python scripts/adapt_scientific.py --methods lora --overwrite   # train a finished run again

Needs the source run ``runs/pretrain_instrument`` (``scripts/pretrain_instrument.py``),
all-MiniLM-L6-v2 in ``pretrained_models/all-MiniLM-L6-v2`` and the data in
``../shared/datasets/amazon-scientific``. The configs are ``configs/adapt/scientific_<method>.yaml``;
the runs go one after another through ``adapter4rec.experiments.sweep``: a finished run is skipped
and an interrupted one resumed (``--overwrite`` trains them again). Run from the repository root.
"""
import sys
from pathlib import Path

from adapter4rec.experiments.sweep import main

if __name__ == "__main__":
    sys.exit(main("scientific", __doc__.splitlines()[0],
                  config_dir=Path(__file__).resolve().parents[1] / "configs" / "adapt"))

"""Adapt the MIND-pretrained news recommender to Adressa with every PEFT method (the study's
text setting, as the reference repository's script folder).

    python scripts/adapt_adressa.py                          # every method, runs/adapt_adressa/<method>
    python scripts/adapt_adressa.py --methods houlsby lora   # some of them
    python scripts/adapt_adressa.py --set train.epochs=20    # any config key, in every run
    python scripts/adapt_adressa.py --set data.user_fraction=0.1   # a seeded tenth of the users
    python scripts/adapt_adressa.py --dry-run                # check the configs, list the runs
    python scripts/adapt_adressa.py --methods lora --overwrite     # train a finished run again

Needs the source run ``runs/pretrain_mind`` (``scripts/pretrain_mind.py``; the runs take
``data.max_seq_len`` and the model shapes from its config.yaml), bert-base-uncased in
``pretrained_models/bert-base-uncased`` and the reference's Adressa files in ``Dataset/Adressa``
(Dataset/README.md). The configs are ``configs/adapt/adressa_<method>.yaml``; the runs go one after
another through ``adapter4rec.experiments.sweep``: a finished run is skipped and an interrupted one
resumed (``--overwrite`` trains them again). Run from the repository root.
"""
import sys
from pathlib import Path

from adapter4rec.experiments.sweep import main

if __name__ == "__main__":
    sys.exit(main("adressa", __doc__.splitlines()[0],
                  config_dir=Path(__file__).resolve().parents[1] / "configs" / "adapt"))

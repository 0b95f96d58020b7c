"""Pretrain on the Amazon Instrument data: the source domain of scripts/adapt_scientific.py.

    python scripts/pretrain_instrument.py                    # runs/pretrain_instrument
    python scripts/pretrain_instrument.py --set train.epochs=5
    python scripts/pretrain_instrument.py --dry-run          # check the config, show the run folder
    torchrun --nproc_per_node 2 scripts/pretrain_instrument.py   # DDP, same script

Config: configs/pretrain/instrument_minilm.yaml. A finished run is skipped and an interrupted one
resumed by running the same command again; ``--overwrite`` trains it again. ``--output DIR``:
another run folder.
"""
import sys
from pathlib import Path

from adapter4rec.experiments.sweep import pretrain_main

if __name__ == "__main__":
    sys.exit(pretrain_main("instrument_minilm", __doc__.splitlines()[0],
                           config_dir=Path(__file__).resolve().parents[1] / "configs" / "pretrain"))

"""Pretrain on the Amazon Instrument data: the source domain of scripts/adapt_scientific.py.

    python scripts/pretrain_instrument.py [--set train.epochs=5] [--resume]
    torchrun --nproc_per_node 2 scripts/pretrain_instrument.py       # DDP, same script

Config: configs/pretrain/instrument_minilm.yaml; run folder: runs/pretrain_instrument.
"""
import argparse
import sys

from adapter4rec.cli import main

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", action="append", default=[], metavar="a.b=value")
    p.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start again in an existing run folder")
    a = p.parse_args()
    sets = [x for s in a.set for x in ("--set", s)]
    # through the command line: one-line errors, and a previous run is refused unless --overwrite
    args = (["train", "--resume", "runs/pretrain_instrument"] if a.resume else
            ["train", "--config", "configs/pretrain/instrument_minilm.yaml", "--output", "runs/pretrain_instrument"] + (["--overwrite"] if a.overwrite else []))
    sys.exit(main(args + sets))

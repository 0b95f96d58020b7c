"""Pretrain on the Amazon Instrument data: the source domain of scripts/adapt_scientific.py.

    python scripts/pretrain_instrument.py [--set train.epochs=5] [--resume]
    torchrun --nproc_per_node 2 scripts/pretrain_instrument.py       # DDP, same script

Config: configs/pretrain/instrument_minilm.yaml; run folder: runs/pretrain_instrument.
"""
import argparse

from adapter4rec.config import load_config
from adapter4rec.training.trainer import train

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", action="append", default=[], metavar="a.b=value")
    p.add_argument("--resume", action="store_true", help="continue runs/pretrain_instrument")
    a = p.parse_args()
    train(load_config("configs/pretrain/instrument_minilm.yaml", a.set), "runs/pretrain_instrument",
          resume=a.resume)

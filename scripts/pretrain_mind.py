"""Pretrain BERT + SASRec (or CPC) on MIND: the source domain of scripts/adapt_adressa.py.

    python scripts/pretrain_mind.py [--user-encoder cpc] [--set train.epochs=5] [--resume]
    torchrun --nproc_per_node 4 scripts/pretrain_mind.py             # DDP, same script

Config: configs/pretrain/mind_bert[_cpc].yaml; run folder: runs/pretrain_mind[_cpc].
"""
import argparse

from adapter4rec.config import load_config
from adapter4rec.training.trainer import train

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--user-encoder", default="sasrec", choices=["sasrec", "cpc"])
    p.add_argument("--set", action="append", default=[], metavar="a.b=value")
    p.add_argument("--resume", action="store_true")
    a = p.parse_args()
    suffix = "_cpc" if a.user_encoder == "cpc" else ""
    train(load_config(f"configs/pretrain/mind_bert{suffix}.yaml", a.set), f"runs/pretrain_mind{suffix}",
          resume=a.resume)

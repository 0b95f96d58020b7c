"""Pretrain BERT + SASRec (or CPC) on MIND: the source domain of scripts/adapt_adressa.py.

    python scripts/pretrain_mind.py [--user-encoder cpc] [--set train.epochs=5] [--resume]
    torchrun --nproc_per_node 4 scripts/pretrain_mind.py             # DDP, same script

Config: configs/pretrain/mind_bert[_cpc].yaml; run folder: runs/pretrain_mind[_cpc].
"""
import argparse
import sys

from adapter4rec.cli import main

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--user-encoder", default="sasrec", choices=["sasrec", "cpc"])
    p.add_argument("--set", action="append", default=[], metavar="a.b=value")
    p.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start again in an existing run folder")
    a = p.parse_args()
    suffix = "_cpc" if a.user_encoder == "cpc" else ""
    sets = [x for s in a.set for x in ("--set", s)]
    # through the command line: one-line errors, and a previous run is refused unless --overwrite
    args = (["train", "--resume", f"runs/pretrain_mind{suffix}"] if a.resume else
            ["train", "--config", f"configs/pretrain/mind_bert{suffix}.yaml", "--output", f"runs/pretrain_mind{suffix}"] + (["--overwrite"] if a.overwrite else []))
    sys.exit(main(args + sets))

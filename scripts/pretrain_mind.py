"""Pretrain BERT + SASRec (or CPC) on MIND: the source domain of scripts/adapt_adressa.py.

    python scripts/pretrain_mind.py                          # runs/pretrain_mind
    python scripts/pretrain_mind.py --user-encoder cpc       # runs/pretrain_mind_cpc
    python scripts/pretrain_mind.py --set train.epochs=5     # any config key
    python scripts/pretrain_mind.py --set data.user_fraction=0.25   # a seeded quarter of the users
    python scripts/pretrain_mind.py --dry-run                # check the config, show the run folder
    torchrun --nproc_per_node 4 scripts/pretrain_mind.py     # DDP, same script

Config: configs/pretrain/mind_bert[_cpc].yaml (the reference's MIND files in Dataset/MIND, see
Dataset/README.md). A finished run is skipped and an interrupted one resumed by running the same
command again; ``--overwrite`` trains it again. ``--output DIR``: another run folder.
"""
import sys
from pathlib import Path

from adapter4rec.experiments.sweep import pretrain_main

if __name__ == "__main__":
    sys.exit(pretrain_main("mind_bert", __doc__.splitlines()[0], variants={"cpc": "mind_bert_cpc"},
                           config_dir=Path(__file__).resolve().parents[1] / "configs" / "pretrain"))

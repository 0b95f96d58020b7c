"""Source-domain pretraining on H&M images (ViT or ViT-MAE item encoder, SASRec or CPC).

    python scripts/pretrain_hm.py --backbone vit --user-encoder sasrec
    python scripts/pretrain_hm.py --backbone mae --user-encoder cpc --set train.batch_size=64
    python scripts/pretrain_hm.py --backbone vit --user-encoder sasrec --dry-run
    torchrun --nproc_per_node 4 scripts/pretrain_hm.py --backbone vit --user-encoder sasrec
    python scripts/pretrain_hm.py --backbone vit --user-encoder sasrec --smoke   # no data needed

Reads configs/pretrain/hm_<backbone>_<user-encoder>.yaml and writes the run to
runs/pretrain_hm_<backbone>_<user-encoder> (the folder configs/adapt/amazon_*.yaml start from;
``--output DIR`` for another). A finished run is skipped and an interrupted one resumed by running
the same command again; ``--overwrite`` trains it again. ``--smoke`` runs the same configuration
for one epoch on a small synthetic image domain with a tiny random-weight model (under
runs/smoke/), to check the whole path on any machine.
"""
from pathlib import Path

from adapter4rec.experiments.images import pretrain_hm
from adapter4rec.runtime.distributed import teardown


def main(argv=None):
    result = pretrain_hm(argv, root=Path(__file__).resolve().parents[1])
    teardown()  # under torchrun: leave the process group before the exit (runtime.distributed)
    return result


if __name__ == "__main__":
    main()

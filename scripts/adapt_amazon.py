"""Target-domain adaptation on Amazon images from an H&M source run, with any PEFT method(s).

    python scripts/adapt_amazon.py --backbone vit --user-encoder sasrec --methods houlsby
    python scripts/adapt_amazon.py --backbone mae --user-encoder sasrec --methods full houlsby lora bitfit
    python scripts/adapt_amazon.py --backbone vit --user-encoder sasrec --methods lora --set peft.options.item_rank=16
    python scripts/adapt_amazon.py --backbone vit --user-encoder sasrec --methods houlsby --dry-run
    python scripts/adapt_amazon.py --backbone vit --user-encoder sasrec --methods houlsby --smoke

Reads configs/adapt/amazon_<backbone>_<user-encoder>.yaml, starts from the source run
runs/pretrain_hm_<backbone>_<user-encoder> (``--init-from`` for another; ``--from-scratch`` for none)
and writes runs/adapt_amazon_<backbone>_<user-encoder>/<method> per method (``--output DIR``:
DIR/<method>), then prints a table of test HR@10 / NDCG@10 and trainable parameters (also saved as
runs/adapt_amazon_<b>_<u>/summary.json, or DIR/summary.json). Methods run one after another in this
process (no shelling out); a finished run is skipped and an interrupted one resumed (``--overwrite``
trains them again). The YAML's ``peft.options`` apply to its own method only; another method starts
from that method's defaults (change them with ``--set peft.options.KEY=VALUE``). Run from the
repository root (the configs' paths are relative to it).
``--smoke``: one epoch per method on a small synthetic target domain with a tiny model, starting
from ``scripts/pretrain_hm.py --smoke`` (run first if absent).
"""
from pathlib import Path

from adapter4rec.experiments.images import adapt_amazon
from adapter4rec.runtime.distributed import teardown


def main(argv=None):
    result = adapt_amazon(argv, root=Path(__file__).resolve().parents[1])
    teardown()  # under torchrun: leave the process group before the exit (runtime.distributed)
    return result


if __name__ == "__main__":
    main()

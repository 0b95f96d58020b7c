"""Source-domain pretraining on H&M images (ViT or ViT-MAE item encoder, SASRec or CPC).

    python scripts/pretrain_hm.py --backbone vit --user-encoder sasrec
    python scripts/pretrain_hm.py --backbone mae --user-encoder cpc --set train.batch_size=64
    torchrun --nproc_per_node 4 scripts/pretrain_hm.py --backbone vit --user-encoder sasrec
    python scripts/pretrain_hm.py --backbone vit --user-encoder sasrec --smoke   # no data needed

Reads configs/pretrain/hm_<backbone>_<user-encoder>.yaml and writes the run to
runs/pretrain/hm_<backbone>_<user-encoder> (the folder configs/adapt/amazon_*.yaml start from).
``--smoke`` runs the same configuration for one epoch on a small synthetic image domain with a tiny
random-weight model (under runs/smoke/), to check the whole path on any machine.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapter4rec.config import load_config  # noqa: E402
from adapter4rec.errors import Adapter4RecError  # noqa: E402

BACKBONES = ("vit", "mae")
USER_ENCODERS = ("sasrec", "cpc")


def smoke_overrides(root: Path, domain: str, backbone: str) -> list[str]:
    """Synthetic image data and a tiny model under ``root`` (made once), as --set overrides."""
    from adapter4rec.data.images import make_image_domain, write_tiny_vit

    data = root / "data" / domain
    if not (data / "images.lmdb").exists():
        make_image_domain(data, domain, n_users=200, n_items=40, seed=0, image_size=32)
    model = root / f"tiny-{backbone}"
    if not (model / "config.json").exists():
        write_tiny_vit(model, backbone)
    return [f"data.path={data}", "data.users_file=users.tsv", "data.items_file=items.tsv",
            "data.images=images.lmdb", "data.image_size=0", f"model.pretrained={model}",
            "model.random_init=false", "train.epochs=1", "train.num_workers=0",
            "train.progress=false"]


def check_data(cfg, readme: str) -> None:
    path = Path(cfg.data.path)
    if not (path / cfg.data.users_file).is_file():
        raise Adapter4RecError(f"{path / cfg.data.users_file} not found: see {readme} for the files "
                               "and how to build the image store (or run with --smoke)")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", choices=BACKBONES, default="vit")
    ap.add_argument("--user-encoder", choices=USER_ENCODERS, default="sasrec")
    ap.add_argument("--config", help="another YAML instead of configs/pretrain/hm_<backbone>_<user>.yaml")
    ap.add_argument("--output", help="run folder (default runs/pretrain/hm_<backbone>_<user>)")
    ap.add_argument("--runs", default="runs", help="parent of the default run folders")
    ap.add_argument("--set", action="append", default=[], metavar="a.b=value", help="override a config key")
    ap.add_argument("--resume", action="store_true", help="continue the run in --output")
    ap.add_argument("--overwrite", action="store_true", help="start again in an existing run folder")
    ap.add_argument("--smoke", action="store_true", help="one epoch on synthetic images with a tiny model")
    args = ap.parse_args(argv)
    from adapter4rec.training.trainer import train

    name = f"hm_{args.backbone}_{args.user_encoder}"
    config = args.config or ROOT / "configs" / "pretrain" / f"{name}.yaml"
    runs = Path(args.runs) / "smoke" if args.smoke else Path(args.runs)
    out = Path(args.output) if args.output else runs / "pretrain" / name
    sets = (smoke_overrides(runs, "source", args.backbone) if args.smoke else []) + args.set
    try:
        cfg = load_config(config, sets)
        if not args.smoke:
            check_data(cfg, "Dataset/HM/README.md")
        if (out / "metrics.jsonl").exists() and not args.resume:
            if not args.overwrite:
                raise Adapter4RecError(f"{out} already holds a run: pass --resume to continue it, "
                                       "--overwrite to start again there, or another --output")
            (out / "metrics.jsonl").unlink()
        res = train(cfg, out, resume=args.resume)
    except Adapter4RecError as e:
        print(f"pretrain_hm: error: {e}", file=sys.stderr)
        raise SystemExit(2)
    print(json.dumps({"run": str(out), "valid": res["valid"], "test": res["test"]}, indent=2))
    return res


if __name__ == "__main__":
    main()

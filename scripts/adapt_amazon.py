"""Target-domain adaptation on Amazon images from an H&M source run, with any PEFT method(s).

    python scripts/adapt_amazon.py --backbone vit --user-encoder sasrec --method houlsby
    python scripts/adapt_amazon.py --backbone mae --user-encoder sasrec --method full,houlsby,lora,bitfit
    python scripts/adapt_amazon.py --backbone vit --user-encoder sasrec --method lora --set peft.options.r=8
    python scripts/adapt_amazon.py --backbone vit --user-encoder sasrec --method houlsby --smoke

Reads configs/adapt/amazon_<backbone>_<user-encoder>.yaml, starts from the source run
runs/pretrain/hm_<backbone>_<user-encoder> (``--init-from`` for another; ``--from-scratch`` for none)
and writes runs/adapt/amazon_<backbone>_<user-encoder>_<method> per method, then prints a table of
test HR@10 / NDCG@10 and trainable parameters. Methods run one after another in this process (no
shelling out). Run from the repository root (the configs' paths are relative to it).
``--smoke``: one epoch per method on a small synthetic target domain with a tiny model, starting
from ``scripts/pretrain_hm.py --smoke`` (run first if absent).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from adapter4rec.config import load_config  # noqa: E402
from adapter4rec.errors import Adapter4RecError  # noqa: E402
from pretrain_hm import BACKBONES, USER_ENCODERS, check_data, smoke_overrides  # noqa: E402


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", choices=BACKBONES, default="vit")
    ap.add_argument("--user-encoder", choices=USER_ENCODERS, default="sasrec")
    ap.add_argument("--method", default="", help="PEFT method(s), comma separated (default: the config's)")
    ap.add_argument("--config", help="another YAML instead of configs/adapt/amazon_<backbone>_<user>.yaml")
    ap.add_argument("--init-from", help="source run folder or checkpoint (default: the config's)")
    ap.add_argument("--from-scratch", action="store_true", help="no source checkpoint (a baseline)")
    ap.add_argument("--output", help="run folder (one method only; default runs/adapt/amazon_<b>_<u>_<method>)")
    ap.add_argument("--runs", default="runs", help="parent of the default run folders")
    ap.add_argument("--set", action="append", default=[], metavar="a.b=value", help="override a config key")
    ap.add_argument("--smoke", action="store_true", help="one epoch on synthetic images with a tiny model")
    args = ap.parse_args(argv)
    from adapter4rec.training.trainer import train

    name = f"amazon_{args.backbone}_{args.user_encoder}"
    config = args.config or ROOT / "configs" / "adapt" / f"{name}.yaml"
    runs = Path(args.runs) / "smoke" if args.smoke else Path(args.runs)
    try:
        base = load_config(config)
        methods = [m.strip() for m in args.method.split(",") if m.strip()] or [base.peft.method]
        if args.output and len(methods) > 1:
            raise Adapter4RecError("--output names one run folder: give one --method with it")
        source = runs / "pretrain" / f"hm_{args.backbone}_{args.user_encoder}"
        sets = []
        if args.smoke:
            sets = smoke_overrides(runs, "target", args.backbone)
            if not args.from_scratch and not args.init_from and not (source / "metrics.json").exists():
                from pretrain_hm import main as pretrain

                pretrain(["--backbone", args.backbone, "--user-encoder", args.user_encoder, "--smoke",
                          "--runs", args.runs])
            sets.append(f"train.init_from={source}")
        if args.init_from:
            sets.append(f"train.init_from={args.init_from}")
        if args.from_scratch:
            sets.append("train.init_from=")
        rows = []
        for method in methods:
            cfg = load_config(config, sets + [f"peft.method={method}"] + args.set)
            if not args.smoke:
                check_data(cfg, "Dataset/Amazon/README.md")
            tag = method + ("_scratch" if args.from_scratch else "")
            out = Path(args.output) if args.output else runs / "adapt" / f"{name}_{tag}"
            res = train(cfg, out)
            rows.append({"method": method, "run": str(out), "HR@10": res["test"].get("HR@10"),
                         "NDCG@10": res["test"].get("NDCG@10"), "trainable": res["trainable_params"],
                         "total": res["total_params"]})
    except Adapter4RecError as e:
        print(f"adapt_amazon: error: {e}", file=sys.stderr)
        raise SystemExit(2)
    print(f"\n{'method':12} {'HR@10':>7} {'NDCG@10':>8} {'trainable':>12} {'total':>12}  run")
    for r in rows:
        print(f"{r['method']:12} {r['HR@10']:7.4f} {r['NDCG@10']:8.4f} {r['trainable']:12,} "
              f"{r['total']:12,}  {r['run']}")
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()

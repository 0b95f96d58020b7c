"""Target-domain adaptation on Amazon images from an H&M source run, with any PEFT method(s).

    python scripts/adapt_amazon.py --backbone vit --user-encoder sasrec --method houlsby
    python scripts/adapt_amazon.py --backbone mae --user-encoder sasrec --method full,houlsby,lora,bitfit
    python scripts/adapt_amazon.py --backbone vit --user-encoder sasrec --method lora --set peft.options.item_rank=16
    python scripts/adapt_amazon.py --backbone vit --user-encoder sasrec --method houlsby --smoke

Reads configs/adapt/amazon_<backbone>_<user-encoder>.yaml, starts from the source run
runs/pretrain/hm_<backbone>_<user-encoder> (``--init-from`` for another; ``--from-scratch`` for none)
and writes runs/adapt/amazon_<backbone>_<user-encoder>_<method> per method, then prints a table of
test HR@10 / NDCG@10 and trainable parameters (also saved as runs/adapt/amazon_<b>_<u>_summary.json).
Methods run one after another in this process (no shelling out); a finished run is skipped and an
interrupted one resumed. The YAML's ``peft.options`` apply to its own method only; another
``--method`` starts from that method's defaults (change them with ``--set peft.options.KEY=VALUE``).
Run from the repository root (the configs' paths are relative to it).
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


def base_config(path: Path, method: str) -> dict:
    """The YAML as a dict; its ``peft.options`` belong to its own method and are dropped for
    another one (the other method starts from its defaults, plus any --set)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    peft = data.setdefault("peft", {})
    if method != peft.get("method", "full"):
        data["peft"] = {"method": method}
    return data


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
    ap.add_argument("--dry-run", action="store_true", help="check the configs and list the runs")
    args = ap.parse_args(argv)
    from adapter4rec.training.trainer import train

    name = f"amazon_{args.backbone}_{args.user_encoder}"
    config = Path(args.config or ROOT / "configs" / "adapt" / f"{name}.yaml")
    runs = Path(args.runs) / "smoke" if args.smoke else Path(args.runs)
    try:
        if not config.is_file():
            raise Adapter4RecError(f"config file {config} does not exist")
        methods = [m.strip() for m in args.method.split(",") if m.strip()] or [
            load_config(config).peft.method]
        if args.output and len(methods) > 1:
            raise Adapter4RecError("--output names one run folder: give one --method with it")
        source = runs / "pretrain" / f"hm_{args.backbone}_{args.user_encoder}"
        sets = []
        if args.smoke:
            sets = smoke_overrides(runs, "target", args.backbone)
            sets.append(f"train.init_from={source}")
        if args.init_from:
            sets.append(f"train.init_from={args.init_from}")
        if args.from_scratch:
            sets.append("train.init_from=")
        plan = []
        for method in methods:  # every config is checked before the first run
            cfg = load_config(overrides=sets + args.set, base=base_config(config, method))
            tag = method + ("_scratch" if args.from_scratch else "")
            plan.append((method, cfg, Path(args.output) if args.output else runs / "adapt" / f"{name}_{tag}"))
        if args.dry_run:
            for method, cfg, out in plan:
                print(f"{method:12} init_from={cfg.train.init_from or '-'}  ->  {out}")
            return []
        if args.smoke and not args.from_scratch and not args.init_from and not (source / "metrics.json").exists():
            from pretrain_hm import main as pretrain

            pretrain(["--backbone", args.backbone, "--user-encoder", args.user_encoder, "--smoke",
                      "--runs", args.runs])
        rows = []
        for method, cfg, out in plan:
            if not args.smoke:
                check_data(cfg, "Dataset/Amazon/README.md")
            if (out / "metrics.json").is_file():
                print(f"{method}: done already ({out})")
            else:  # an interrupted run is resumed
                train(cfg, out, resume=(out / "metrics.jsonl").is_file())
            res = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
            rows.append({"method": method, "run": str(out), "HR@10": res["test"].get("HR@10"),
                         "NDCG@10": res["test"].get("NDCG@10"), "trainable": res["trainable_params"],
                         "total": res["total_params"], "adapter_mb": res.get("checkpoint_mb")})
    except Adapter4RecError as e:
        print(f"adapt_amazon: error: {e}", file=sys.stderr)
        raise SystemExit(2)
    print(f"\n{'method':12} {'HR@10':>7} {'NDCG@10':>8} {'trainable':>12} {'total':>12}  run")
    for r in rows:
        print(f"{r['method']:12} {r['HR@10']:7.4f} {r['NDCG@10']:8.4f} {r['trainable']:12,} "
              f"{r['total']:12,}  {r['run']}")
    summary = (runs / "adapt" / f"{name}_summary.json") if not args.output else Path(args.output) / "summary.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return rows


if __name__ == "__main__":
    main()

"""The image experiments of the study: pretraining on H&M images, adaptation to Amazon images
(ViT or ViT-MAE item encoder, SASRec or CPC user encoder), behind ``scripts/pretrain_hm.py`` and
``scripts/adapt_amazon.py``. ``--smoke`` runs them for one epoch on synthetic images with a tiny
random-weight model, to check the whole path on any machine. The command line is the one of every
script (``sweep.script_parser``: ``--methods``, ``--set``, ``--output``, ``--overwrite``,
``--dry-run``) plus ``--backbone``, ``--user-encoder``, ``--config``, ``--runs``, ``--smoke`` (and,
for the adaptation, ``--init-from``, ``--from-scratch``).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..config import load_config
from ..errors import Adapter4RecError
from .sweep import (
    format_table,
    method_names,
    planned,
    pretrain,
    report,
    run_plan,
    script_parser,
)

BACKBONES = ("vit", "mae")
USER_ENCODERS = ("sasrec", "cpc")


def smoke_overrides(root: Path, domain: str, backbone: str) -> list[str]:
    """Synthetic image data and a tiny model under ``root`` (made once), as --set overrides."""
    from ..data.synthetic import make_image_domain, write_tiny_vit

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


def base_config(path: Path, method: str) -> dict:
    """The YAML as a dict; its ``peft.options`` belong to its own method and are dropped for
    another one (the other method starts from its defaults, plus any --set)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    peft = data.setdefault("peft", {})
    if method != peft.get("method", "full"):
        data["peft"] = {"method": method}
    return data


def pretrain_hm(argv=None, root: str | Path = ".") -> dict:
    """``scripts/pretrain_hm.py``: source-domain pretraining on H&M images. Returns the run's
    metrics (``{}`` for ``--dry-run``); exits with status 2 on an error."""
    root = Path(root)
    ap = script_parser("Source-domain pretraining on H&M images", methods=False,
                       output_help="the run folder (default runs/pretrain_hm_<backbone>_<user>)")
    ap.add_argument("--backbone", choices=BACKBONES, default="vit")
    ap.add_argument("--user-encoder", choices=USER_ENCODERS, default="sasrec")
    ap.add_argument("--config", help="another YAML instead of configs/pretrain/hm_<backbone>_<user>.yaml")
    ap.add_argument("--runs", default="runs", help="parent of the default run folders")
    ap.add_argument("--smoke", action="store_true", help="one epoch on synthetic images with a tiny model")
    args = ap.parse_args(argv)
    name = f"hm_{args.backbone}_{args.user_encoder}"
    config = args.config or root / "configs" / "pretrain" / f"{name}.yaml"
    runs = Path(args.runs) / "smoke" if args.smoke else Path(args.runs)
    out = Path(args.output) if args.output else runs / f"pretrain_{name}"
    try:
        sets = (smoke_overrides(runs, "source", args.backbone) if args.smoke else []) + args.set
        if not args.smoke and not args.dry_run:
            check_data(load_config(config, sets), "Dataset/HM/README.md")
        rows = pretrain(name, config, out, sets, args.dry_run, args.overwrite)
    except Adapter4RecError as e:
        raise SystemExit(report("pretrain_hm", e))
    print(format_table(rows))
    if args.dry_run:
        return {}
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))


def adapt_amazon(argv=None, root: str | Path = ".") -> list[dict]:
    """``scripts/adapt_amazon.py``: adaptation to Amazon images from an H&M source run. Returns
    one row per method; exits with status 2 on an error."""
    root = Path(root)
    ap = script_parser("Target-domain adaptation on Amazon images from an H&M source run",
                       output_help="parent folder of the runs, one sub-folder per method "
                                   "(default: runs/adapt_amazon_<b>_<u>/<method>)")
    ap.add_argument("--backbone", choices=BACKBONES, default="vit")
    ap.add_argument("--user-encoder", choices=USER_ENCODERS, default="sasrec")
    ap.add_argument("--config", help="another YAML instead of configs/adapt/amazon_<backbone>_<user>.yaml")
    ap.add_argument("--init-from", help="source run folder or checkpoint (default: the config's)")
    ap.add_argument("--from-scratch", action="store_true", help="no source checkpoint (a baseline)")
    ap.add_argument("--runs", default="runs", help="parent of the default run folders")
    ap.add_argument("--smoke", action="store_true", help="one epoch on synthetic images with a tiny model")
    args = ap.parse_args(argv)
    name = f"amazon_{args.backbone}_{args.user_encoder}"
    config = Path(args.config or root / "configs" / "adapt" / f"{name}.yaml")
    runs = Path(args.runs) / "smoke" if args.smoke else Path(args.runs)
    try:
        if not config.is_file():
            raise Adapter4RecError(f"config file {config} does not exist")
        methods = method_names(args.methods) or [load_config(config).peft.method]
        source = runs / f"pretrain_hm_{args.backbone}_{args.user_encoder}"
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
            out = (Path(args.output) if args.output else runs / f"adapt_{name}") / tag
            plan.append((method, cfg, out))
        if args.dry_run:
            print(format_table([planned(m, config, cfg, out) for m, cfg, out in plan]))
            return []
        if args.smoke and not args.from_scratch and not args.init_from and not (source / "metrics.json").exists():
            pretrain_hm(["--backbone", args.backbone, "--user-encoder", args.user_encoder,
                         "--smoke", "--runs", args.runs], root)
        if not args.smoke:
            for _, cfg, _ in plan:
                check_data(cfg, "Dataset/Amazon/README.md")
        summary = (Path(args.output) if args.output else runs / f"adapt_{name}") / "summary.json"
        rows = run_plan(plan, summary, args.overwrite)
    except Adapter4RecError as e:
        raise SystemExit(report("adapt_amazon", e))
    print(format_table(rows))
    return rows

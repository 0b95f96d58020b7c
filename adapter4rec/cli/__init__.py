"""The `adapter4rec` command: train, evaluate, popularity, demo, report, build-lmdb, cache,
methods, synthetic.

A run under torchrun (`torchrun --nproc_per_node N -m adapter4rec.cli train ...`) uses DDP with
the same command line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import Adapter4RecError
from ..runtime import distributed as dist
from .cache import add_cache_parser
from .lmdb import add_build_lmdb_parser
from .suite import add_suite_parser, suite_file


def _train(args) -> None:
    from ..config import load_config
    from ..training.trainer import train

    if args.resume:
        run = Path(args.resume)
        if not (run / "config.yaml").is_file():
            raise Adapter4RecError(f"--resume {run}: no config.yaml there (not a run folder)")
        cfg = load_config(run / "config.yaml", args.set)
        train(cfg, run, resume=True)
        return
    if not args.output:
        raise Adapter4RecError("train needs --output DIR (or --resume DIR)")
    out = Path(args.output)
    # a run killed before its first evaluation has checkpoints but no metrics yet
    if any((out / p).exists() for p in ("metrics.jsonl", "checkpoints")) and not args.overwrite:
        raise Adapter4RecError(f"{out} already holds a run: pass --resume {out} to continue it, "
                               "--overwrite to start again there, or another --output")
    train(load_config(args.config, args.set), out)  # a new run clears the folder's old one


def _evaluate(args) -> None:
    from ..pipeline import evaluate_run

    print(json.dumps(evaluate_run(args.run, args.split, args.set, args.allow_source_change), indent=2))


def _popularity(args) -> None:
    from ..config import load_config
    from ..training.popularity import popularity_run

    res = popularity_run(load_config(args.config, args.set), args.output)
    print(json.dumps({"valid": res["valid"], "test": res["test"]}, indent=2))


def _demo(args) -> None:
    from ..experiments.demo import run_demo

    run_demo(args.output, epochs=args.epochs, seed=args.seed, progress=not args.no_progress)


def _report(args) -> None:
    from ..experiments.report import report

    report(args.runs, args.plot, args.markdown, csv=args.csv, plots=args.plots, pairs=args.pair,
           auto_pairs=not args.no_auto_pairs, k=args.k, resamples=args.resamples,
           suites=[suite_file(x) for x in args.suite], why=args.why)


def _methods(args) -> None:
    from .. import peft

    for name in peft.available():
        print(f"{name}: {peft.registry.get(name).doc}")
        for key, default, doc in peft.options_of(name):
            print(f"    {key} = {default!r}  {doc}")


def _configs(args) -> None:
    import shutil

    root = Path(__file__).resolve().parents[1] / "configs"  # shipped inside the package
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*.yaml"))
    if args.configs_command == "list":
        print("\n".join(names))
        return
    if args.name not in names:
        raise Adapter4RecError(f"no shipped config {args.name!r} (adapter4rec configs list)")
    src = root / args.name
    if args.configs_command == "path":
        print(src)
        return
    dest = Path(args.dest)
    dest = dest / src.name if dest.is_dir() else dest
    if dest.exists():
        raise Adapter4RecError(f"{dest} exists; remove it or choose another destination")
    shutil.copy(src, dest)
    # a config that extends a shipped base: copy the base beside it, so the copy loads alone
    for line in src.read_text(encoding="utf-8").splitlines():
        if line.startswith("extends:"):
            base = src.parent / line.split(":", 1)[1].strip()
            if not (dest.parent / base.name).exists():
                shutil.copy(base, dest.parent / base.name)
    print(dest)


def _synthetic(args) -> None:
    from ..data.synthetic import make_transfer_pair

    source, target = make_transfer_pair(args.out_dir, seed=args.seed)
    print(f"wrote {source} and {target}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="adapter4rec", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="pretrain or adapt (init_from marks adaptation)")
    t.add_argument("--config", help="experiment YAML (configs/...)")
    t.add_argument("--output", help="run folder to write")
    t.add_argument("--set", action="append", default=[], metavar="a.b=value", help="override a config key")
    t.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its latest checkpoint")
    t.add_argument("--overwrite", action="store_true", help="start again in an existing run folder")
    t.set_defaults(func=_train)

    e = sub.add_parser("evaluate", help="full-ranking HR@10/NDCG@10 of a run's best checkpoint")
    e.add_argument("--run", required=True, help="run folder")
    e.add_argument("--split", default="test", choices=["valid", "test", "both"])
    e.add_argument("--set", action="append", default=[], metavar="a.b=value")
    e.add_argument("--allow-source-change", action="store_true",
                   help="evaluate even if the run's source checkpoint or frozen weights changed")
    e.set_defaults(func=_evaluate)

    q = sub.add_parser("popularity", help="the most-popular baseline on a config's data, as a run "
                       "folder the report reads (seconds)")
    q.add_argument("--config", required=True, help="experiment YAML: its data.* and eval.k keys count")
    q.add_argument("--output", required=True, help="run folder to write")
    q.add_argument("--set", action="append", default=[], metavar="a.b=value", help="override a config key")
    q.set_defaults(func=_popularity)

    d = sub.add_parser("demo", help="synthetic source -> target transfer, end to end")
    d.add_argument("--output", default="runs/demo")
    d.add_argument("--epochs", type=int, default=5)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=_demo)

    r = sub.add_parser("report", help="tables, paired confidence intervals and plots over runs "
                       "(docs/report.md)")
    r.add_argument("runs", nargs="+", help="run folders (or parents of run folders, at any depth; "
                   "subfolders and each path given are grouped apart)")
    r.add_argument("--markdown", metavar="F.md", help="write the tables as Markdown here")
    r.add_argument("--csv", metavar="F.csv", help="write the run table here, and F.variants.csv, "
                   "F.pairs.csv beside it")
    r.add_argument("--plots", metavar="DIR", help="write the PNG plots here (needs matplotlib): "
                   "tradeoff, scaling_target, scaling_source, resources")
    r.add_argument("--plot", metavar="F.png", help="write the trade-off plot alone here")
    r.add_argument("--pair", action="append", default=[], metavar="A:B",
                   help="also compare A with B (labels, run names or glob patterns); repeatable")
    r.add_argument("--no-auto-pairs", action="store_true",
                   help="compare only the --pair pairs (not each method with full, transfer with scratch)")
    r.add_argument("--k", type=int, default=10, help="cut-off of the NDCG in the confidence "
                   "intervals and the plots (default 10)")
    r.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    r.add_argument("--suite", action="append", default=[], metavar="SUITE",
                   help="also list this suite's planned runs that have not finished (in progress: "
                        "the epochs so far; failed; not started); a file or a shipped suite's name; "
                        "repeatable")
    r.add_argument("--why", action="append", default=[], metavar="PATTERN:REASON",
                   help="why the unfinished runs whose name matches PATTERN (as suite run --only "
                        "takes) were not run, shown beside them; repeatable, the first match counts")
    r.set_defaults(func=_report)

    add_build_lmdb_parser(sub)
    add_cache_parser(sub)
    add_suite_parser(sub)

    c = sub.add_parser("configs", help="the experiment configs shipped with the package")
    csub = c.add_subparsers(dest="configs_command", required=True)
    csub.add_parser("list", help="list them (e.g. adapt/scientific_houlsby.yaml)")
    for name, what in (("path", "print where a shipped config is"),
                       ("copy", "copy a shipped config (and the base it extends) to DEST")):
        q = csub.add_parser(name, help=what)
        q.add_argument("name", help="as `adapter4rec configs list` prints it")
        if name == "copy":
            q.add_argument("dest", nargs="?", default=".", help="a file or a folder (default: here)")
    c.set_defaults(func=_configs)

    m = sub.add_parser("methods", help="list the PEFT methods with their options and defaults")
    m.set_defaults(func=_methods)

    y = sub.add_parser("synthetic", help="write a synthetic source/target dataset pair")
    y.add_argument("out_dir")
    y.add_argument("--seed", type=int, default=0)
    y.set_defaults(func=_synthetic)

    args = p.parse_args(argv)
    try:
        args.func(args)
        dist.teardown()
    except Adapter4RecError as err:
        print(f"adapter4rec: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file the library did not expect to fail: still one line
        print(f"adapter4rec: error: {err}", file=sys.stderr)
        return 2
    return 0

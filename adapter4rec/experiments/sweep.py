"""Runs of the study's experiments, and the command line every ``scripts/*.py`` shares.

``run_plan`` trains a list of (name, config, run folder) one after another in this process: a
finished run (``metrics.json`` present) is skipped and an interrupted one resumed, unless
``overwrite`` (``--overwrite``) trains it again from the start; a table of the results, with each
run's adapter size next to the whole model's, ends it (saved as ``summary.json``). ``adapt`` plans
one run per method from ``configs/adapt/<target>_<method>.yaml`` (+ ``--set`` overrides) into
``<output>/<method>``; ``pretrain`` one source-domain run from ``configs/pretrain/<name>.yaml``.

One command line for every script (``script_parser``): ``--methods a b`` (adaptations), ``--set
a.b=value`` (repeatable, every run), ``--output`` (adaptations: the folder of the method runs,
``runs/<experiment>/<method>``; pretraining: the run folder), ``--overwrite``, ``--dry-run`` (check
the configs, list the runs, train nothing). A run folder that holds a run is never overwritten
without ``--overwrite``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..config import load_config
from ..errors import Adapter4RecError, ConfigError
from ..peft import available
from ..peft.options import parse
from ..peft.registry import get as peft_get
from ..runtime import distributed as dist
from ..training.trainer import train

COLUMNS = ("method", "trainable", "total", "adapter_mb", "model_mb", "valid_NDCG@10", "test_HR@10",
           "test_NDCG@10", "run")


def config_path(config_dir: str | Path, target: str, method: str) -> Path:
    return Path(config_dir) / f"{target}_{method}.yaml"


def methods_for(config_dir: str | Path, target: str) -> list[str]:
    """The methods with a config for ``target``, in ``peft.available()`` order."""
    return [m for m in available() if config_path(config_dir, target, m).is_file()]


def _row(method: str, metrics: dict, run: Path) -> dict:
    peft = metrics.get("peft", {})
    model_mb = None
    if "total" in peft:
        model_mb = round(peft["total"] * 4 / 2**20, 3)  # fp32
    return {"method": method, "trainable": metrics.get("trainable_params"),
            "total": metrics.get("total_params"), "adapter_mb": metrics.get("checkpoint_mb"),
            "model_mb": model_mb, "valid_NDCG@10": metrics.get("valid", {}).get("NDCG@10"),
            "test_HR@10": metrics.get("test", {}).get("HR@10"),
            "test_NDCG@10": metrics.get("test", {}).get("NDCG@10"), "run": str(run)}


def _main_process() -> bool:
    """Rank 0 (or no torchrun): the process that prints and writes the summary."""
    return int(os.environ.get("RANK", "0")) == 0


def run_state(run: Path) -> str:
    """``finished`` (metrics.json), ``interrupted`` (metrics or checkpoints, no metrics.json) or
    ``new``."""
    if (run / "metrics.json").is_file():
        return "finished"
    if (run / "metrics.jsonl").is_file() or (run / "checkpoints").exists():
        return "interrupted"
    return "new"


def run_plan(plan: list[tuple[str, object, Path]], summary: str | Path | None = None,
             overwrite: bool = False) -> list[dict]:
    """Train each (name, config, run folder) of ``plan`` in turn; one result row each.

    A finished run is skipped and an interrupted one resumed; with ``overwrite`` both start again."""
    rows = []
    for name, cfg, run in plan:
        run = Path(run)
        state = run_state(run)
        if state == "finished" and not overwrite:
            if _main_process():
                print(f"{name}: done already ({run}; --overwrite to train it again)")
        else:
            train(cfg, run, resume=state == "interrupted" and not overwrite)
        rows.append(_row(name, json.loads((run / "metrics.json").read_text(encoding="utf-8")), run))
    if summary is not None and rows and _main_process():
        Path(summary).parent.mkdir(parents=True, exist_ok=True)
        Path(summary).write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return rows


def planned(name: str, config, cfg, run: Path) -> dict:
    """A dry run's row: what would be trained, from where, into which folder."""
    return {"method": name, "config": str(config), "init_from": cfg.train.init_from or "-",
            "output": str(run), "state": run_state(Path(run))}


def adapt(target: str, config_dir: str | Path, output: str | Path, methods: list[str] | None = None,
          overrides: list[str] | None = None, dry_run: bool = False,
          overwrite: bool = False) -> list[dict]:
    """Train ``target`` with each method into ``output/<method>``; one result row per method."""
    known = methods_for(config_dir, target)
    methods = methods or known
    missing = [m for m in methods if m not in known]
    if missing:
        raise ConfigError(f"no config for {', '.join(missing)} in {config_dir} (have: {', '.join(known)})")
    output = Path(output)
    plan = [(m, load_config(config_path(config_dir, target, m), overrides), output / m)
            for m in methods]  # every config is checked before the first run, too
    for _, cfg, _ in plan:  # and every method's options (a typo fails here, not an hour later)
        parse(peft_get(cfg.peft.method).options, cfg.peft.method, cfg.peft.options)
    if dry_run:
        return [planned(m, config_path(config_dir, target, m), cfg, run) for m, cfg, run in plan]
    return run_plan(plan, output / "summary.json", overwrite)


def pretrain(name: str, config: str | Path, output: str | Path, overrides: list[str] | None = None,
             dry_run: bool = False, overwrite: bool = False) -> list[dict]:
    """Source-domain pretraining with ``config`` into the run folder ``output``; one row."""
    cfg = load_config(config, overrides)
    if dry_run:
        return [planned(name, config, cfg, Path(output))]
    return run_plan([(name, cfg, Path(output))], None, overwrite)


def format_table(rows: list[dict]) -> str:
    """A plain-text table of ``adapt``'s rows (dry run: method, config, output)."""
    if not rows:
        return "(no runs)"
    cols = COLUMNS if "trainable" in rows[0] else ("method", "config", "init_from", "output", "state")

    def cell(value) -> str:
        return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    cells = [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


# --- the command line of scripts/*.py ----------------------------------------------------------

# Where the scripts' runs go by default. Adaptations: runs/<experiment>/<method>. Pretraining: the
# run folder that configs/adapt/<target>_base.yaml names as train.init_from.
ADAPT_OUTPUT = "runs/adapt_{target}"
PRETRAIN_OUTPUT = {"mind_bert": "runs/pretrain_mind", "mind_bert_cpc": "runs/pretrain_mind_cpc",
                   "instrument_minilm": "runs/pretrain_instrument"}


def script_parser(description: str, methods: bool = True, output_help: str | None = None
                  ) -> argparse.ArgumentParser:
    """The options every script has: ``--methods`` (when it runs methods), ``--set``, ``--output``,
    ``--overwrite``, ``--dry-run``. A script adds its own (``--backbone``, ...) to the parser."""
    p = argparse.ArgumentParser(description=description)
    if methods:
        p.add_argument("--methods", nargs="+", action="extend", metavar="METHOD",
                       help="PEFT methods to run (default: every method with a config)")
        # the old spelling of one script, `--method a,b`: read the same way
        p.add_argument("--method", dest="methods", nargs="+", action="extend", help=argparse.SUPPRESS)
    p.add_argument("--set", action="append", default=[], metavar="a.b=value",
                   help="override a config key (in every run)")
    p.add_argument("--output", help=output_help or "parent folder of the runs, one sub-folder per method")
    p.add_argument("--overwrite", action="store_true",
                   help="train again where a run folder holds a run (without it a finished run is "
                        "skipped and an interrupted one resumed)")
    p.add_argument("--dry-run", action="store_true", help="check the configs and list the runs, train nothing")
    # a run is resumed by running the same command again; --resume is kept for old command lines
    p.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    return p


def method_names(values: list[str] | None) -> list[str]:
    """``--methods a b`` (or ``a,b``) as a list without repeats, in the order given."""
    out: list[str] = []
    for value in values or []:
        for m in value.split(","):
            if m.strip() and m.strip() not in out:
                out.append(m.strip())
    return out


def report(name: str, err: Exception) -> int:
    print(f"{name}: error: {err}", file=sys.stderr)
    return 2


def main(target: str, description: str, argv: list[str] | None = None,
         config_dir: str | Path | None = None, default_output: str | None = None) -> int:
    """``scripts/adapt_<target>.py``: every method (or ``--methods``) over one target."""
    p = script_parser(description)
    p.add_argument("--configs", default=str(config_dir or "configs/adapt"), help="config folder")
    args = p.parse_args(argv)
    output = args.output or default_output or ADAPT_OUTPUT.format(target=target)
    try:
        rows = adapt(target, args.configs, output, method_names(args.methods), args.set,
                     args.dry_run, args.overwrite)
    except Adapter4RecError as err:
        return report(f"adapt {target}", err)
    if _main_process():
        print(format_table(rows))
    dist.teardown()  # under torchrun: before the exit, which could abort a rank (runtime.distributed)
    return 0


def pretrain_main(name: str, description: str, argv: list[str] | None = None,
                  config_dir: str | Path | None = None, default_output: str | None = None,
                  variants: dict[str, str] | None = None) -> int:
    """``scripts/pretrain_<source>.py``: one source-domain run of ``configs/pretrain/<name>.yaml``
    (``variants``: ``--user-encoder`` value -> config name, e.g. ``{"cpc": "mind_bert_cpc"}``)."""
    p = script_parser(description, methods=False, output_help="the run folder")
    if variants:
        p.add_argument("--user-encoder", default="sasrec", choices=["sasrec", *variants])
    args = p.parse_args(argv)
    if variants and args.user_encoder in variants:
        name = variants[args.user_encoder]
    config = Path(config_dir or "configs/pretrain") / f"{name}.yaml"
    output = args.output or default_output or PRETRAIN_OUTPUT.get(name, f"runs/pretrain/{name}")
    try:
        rows = pretrain(name, config, output, args.set, args.dry_run, args.overwrite)
    except Adapter4RecError as err:
        return report(f"pretrain {name}", err)
    if _main_process():
        print(format_table(rows))
    dist.teardown()  # under torchrun: before the exit, which could abort a rank (runtime.distributed)
    return 0

"""Target adaptation with every PEFT method: the loop behind ``scripts/adapt_*.py``.

``run_plan`` trains a list of (name, config, run folder) one after another in this process: a
finished run (``metrics.json`` present) is skipped, an interrupted one resumed, and a table of the
results, with each run's adapter size next to the whole model's, ends it (saved as
``summary.json``). ``adapt`` plans one run per method from ``configs/adapt/<target>_<method>.yaml``
(+ ``--set`` overrides) into ``<output>/<method>``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import load_config
from ..errors import Adapter4RecError, ConfigError
from ..peft import available
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


def run_plan(plan: list[tuple[str, object, Path]], summary: str | Path | None = None) -> list[dict]:
    """Train each (name, config, run folder) of ``plan`` in turn; one result row each."""
    rows = []
    for name, cfg, run in plan:
        run = Path(run)
        if (run / "metrics.json").is_file():
            print(f"{name}: done already ({run})")
        else:  # an interrupted run (metrics.jsonl but no metrics.json) is resumed
            train(cfg, run, resume=(run / "metrics.jsonl").is_file())
        rows.append(_row(name, json.loads((run / "metrics.json").read_text(encoding="utf-8")), run))
    if summary is not None and rows:
        Path(summary).parent.mkdir(parents=True, exist_ok=True)
        Path(summary).write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return rows


def adapt(target: str, config_dir: str | Path, output: str | Path, methods: list[str] | None = None,
          overrides: list[str] | None = None, dry_run: bool = False) -> list[dict]:
    """Train ``target`` with each method; returns one result row per method."""
    known = methods_for(config_dir, target)
    methods = methods or known
    missing = [m for m in methods if m not in known]
    if missing:
        raise ConfigError(f"no config for {', '.join(missing)} in {config_dir} (have: {', '.join(known)})")
    output = Path(output)
    plan = [(m, load_config(config_path(config_dir, target, m), overrides), output / m)
            for m in methods]  # every config is checked before the first run, too
    if dry_run:
        return [{"method": m, "config": str(config_path(config_dir, target, m)), "output": str(run)}
                for m, _, run in plan]
    return run_plan(plan, output / "summary.json")


def format_table(rows: list[dict]) -> str:
    """A plain-text table of ``adapt``'s rows (dry run: method, config, output)."""
    if not rows:
        return "(no runs)"
    cols = COLUMNS if "trainable" in rows[0] else ("method", "config", "output")

    def cell(value) -> str:
        return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    cells = [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def main(target: str, description: str, argv: list[str] | None = None,
         config_dir: str | Path | None = None, default_output: str | None = None) -> int:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--methods", nargs="+", help="methods to run (default: every method with a config)")
    p.add_argument("--output", default=default_output or f"runs/adapt_{target}",
                   help="parent folder of the runs (one sub-folder per method)")
    p.add_argument("--set", action="append", default=[], metavar="a.b=value",
                   help="override a config key in every run")
    p.add_argument("--configs", default=str(config_dir or "configs/adapt"), help="config folder")
    p.add_argument("--dry-run", action="store_true", help="check the configs and list the runs")
    args = p.parse_args(argv)
    try:
        rows = adapt(target, args.configs, args.output, args.methods, args.set, args.dry_run)
    except Adapter4RecError as err:
        print(f"adapt {target}: error: {err}")
        return 2
    print(format_table(rows))
    return 0

"""`adapter4rec report`: one table (and optionally a bar chart) over runs' metrics.json."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..errors import Adapter4RecError


def collect(paths: list[str]) -> list[dict]:
    rows = []
    for p in paths:
        for m in sorted(Path(p).rglob("metrics.json")):
            run = m.parent
            try:
                res = json.loads(m.read_text(encoding="utf-8"))
            except ValueError as e:  # a run still writing it, or a cut-off copy
                raise Adapter4RecError(f"{m}: not valid JSON ({e}); re-run or remove that run") from None
            if not isinstance(res, dict) or not isinstance(res.get("valid"), dict) \
                    or not isinstance(res.get("test"), dict):
                raise Adapter4RecError(f"{m}: not a metrics.json written by adapter4rec train")
            try:
                cfg = (yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
                       if (run / "config.yaml").exists() else {})
            except yaml.YAMLError as e:
                raise Adapter4RecError(f"{run / 'config.yaml'}: not valid YAML ({e})") from None
            k = (cfg.get("eval") or {}).get("k", 10)  # the run's own cut-off, not always 10
            rows.append({"run": str(run), "method": cfg.get("peft", {}).get("method", "?"),
                         f"valid_NDCG@{k}": res["valid"].get(f"NDCG@{k}", float("nan")),
                         f"test_HR@{k}": res["test"].get(f"HR@{k}", float("nan")),
                         f"test_NDCG@{k}": res["test"].get(f"NDCG@{k}", float("nan")),
                         "trainable": res.get("trainable_params", 0),
                         "checkpoint_mb": res.get("checkpoint_mb", float("nan"))})
    if not rows:
        raise Adapter4RecError(f"no metrics.json under {', '.join(paths)}")
    return rows


def to_markdown(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(c for r in rows for c in r))  # runs may differ in their cut-off k

    def cell(v) -> str:
        return "" if v is None else f"{v:.4f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(cell(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def report(paths: list[str], plot: str | None = None, markdown: str | None = None) -> list[dict]:
    rows = collect(paths)
    table = to_markdown(rows)
    print(table)
    if markdown:
        Path(markdown).write_text(table + "\n", encoding="utf-8")
    if plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise Adapter4RecError("--plot needs matplotlib: pip install 'adapter4rec[plots]'") from None
        fig, ax = plt.subplots(figsize=(max(4, len(rows) * 0.8), 3.5))
        key = next(c for c in rows[0] if c.startswith("test_NDCG@"))
        ax.bar([Path(r["run"]).name for r in rows], [r.get(key, float("nan")) for r in rows])
        ax.set_ylabel(key.replace("_", " "))
        ax.tick_params(axis="x", rotation=45)
        fig.tight_layout()
        fig.savefig(plot, dpi=120)
    return rows

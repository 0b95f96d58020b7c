"""A run folder for the most-popular baseline (``adapter4rec popularity``): the same files a
trained run has (config.yaml, run.json, metrics.json, ranks.npz), so ``adapter4rec report`` puts
it beside the models and pairs it with them (``--pair``), on the same users and candidates."""
from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

from ..config import Config, save_config
from ..errors import Adapter4RecError
from ..evaluation.evaluator import log_unreachable
from ..evaluation.popularity import evaluate_popularity
from ..pipeline import RUN_FILE, RUN_FORMAT, RUN_FORMAT_VERSION, data_digest, load_data
from ..runtime.io import write_text_atomic
from ..runtime.logging import setup_logging
from ..runtime.provenance import environment
from .trainer import RANKS_FILE, save_ranks

log = logging.getLogger("adapter4rec")

METHOD = "popularity"  # peft.method in its config.yaml: what the report names it by


def popularity_run(cfg: Config, output: str | Path) -> dict:
    """Rank every item by its count in the training sequences of ``cfg``'s data (its
    ``data.user_fraction`` of users, with their items only; ties broken by ``train.seed``),
    evaluate valid and test like a trained run, and write the run folder; returns its
    metrics.json."""
    out = Path(output)
    if (out / "metrics.jsonl").is_file() or (out / "checkpoints").exists():
        # a trained run's files would be overwritten by a baseline's: never lose them silently
        raise Adapter4RecError(f"{out} holds a trained run: give the popularity baseline another "
                               "--output")
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(out)
    start = time.perf_counter()
    data = load_data(cfg)
    log.info("popularity: %d users, %d items", data.n_users, data.n_items)
    log_unreachable(data, cfg.data.exclude_history)
    metrics, ranks = evaluate_popularity(data, k=cfg.eval.k, exclude_history=cfg.data.exclude_history,
                                         seed=cfg.train.seed)  # the seed breaks ties in the counts
    # its config says what it was computed from: the data keys as given; no model, no source
    saved = copy.deepcopy(cfg)
    saved.peft.method, saved.peft.options, saved.train.init_from = METHOD, {}, ""
    save_config(saved, out / "config.yaml")
    data.save_kept_users(out)
    info = {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION,
            "starts": [environment("cpu")], "world": 1,
            "fingerprints": {"data": data_digest(data)}}
    write_text_atomic(out / RUN_FILE, json.dumps(info, indent=1, default=str))
    save_ranks(out / RANKS_FILE, ranks, -1)  # no epochs: -1 with metrics.json's best_epoch null
    final = {"best_epoch": None, "valid": metrics["valid"], "test": metrics["test"],
             "trainable_params": 0, "total_params": 0,
             "train_seconds": round(time.perf_counter() - start, 3), "peft": {"method": METHOD}}
    write_text_atomic(out / "metrics.json", json.dumps(final, indent=2))
    log.info("popularity: valid %s test %s", metrics["valid"], metrics["test"])
    return final

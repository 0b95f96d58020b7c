"""The Python API for notebooks and scripts (exported from ``adapter4rec``).

    import adapter4rec as a4r
    data = a4r.RecData.from_frames(interactions, items, user_col="user", item_col="item",
                                   time_col="ts", text_cols=["title"])
    cfg = a4r.load_config(overrides=["model.pretrained=pretrained_models/all-MiniLM-L6-v2"])
    model = a4r.build_model(cfg, data)                 # holds its content store
    a4r.peft.apply(model, "houlsby")
    result = a4r.train(cfg, data=data, model=model)   # result.model is `model`, at its best epoch
    a4r.evaluate(result.model, data, k=(10, 20))      # {"HR@10": ..., "NDCG@10": ..., ...}
    a4r.recommend(result.model, [["item1", "item7"]], k=5)
    model, data, cfg = a4r.load_run(result.run_dir)   # later, from the run folder
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .config import Config, load_config
from .data.split import RecData
from .evaluation.evaluator import evaluate as _evaluate
from .evaluation.recommend import recommend
from .model import Recommender, build_model
from .pipeline import open_run
from .runtime.io import load_into, load_weights
from .runtime.precision import amp_dtype
from .training.callbacks import Callback
from .training.trainer import train as _train


class TrainResult(dict):
    """The final metrics (``metrics.json``: ``result["test"]["NDCG@10"]``, as ``train`` returned
    them before) with ``model`` (at its best validation epoch), ``metrics`` and ``run_dir``."""

    def __init__(self, metrics: dict, model: Recommender, run_dir: Path):
        super().__init__(metrics)
        self.metrics, self.model, self.run_dir = metrics, model, run_dir


def train(cfg: Config | None = None, output: str | Path | None = None, data: RecData | None = None,
          model: Recommender | None = None, callbacks: list[Callback] | None = None,
          resume: bool = False) -> TrainResult:
    """Train under ``cfg`` (default: the package defaults) into ``output`` (default: a new
    ``runs/<time>-<method>`` folder). ``data``: a ``RecData`` (else ``cfg.data``); it is saved into
    the run folder when it has no path. ``model``: a ``build_model`` model, trained in place (a
    method applied to it beforehand is kept). The returned model holds the best checkpoint's
    weights, so that evaluating it gives the reported numbers."""
    cfg = cfg or load_config()
    if output is None:
        method = model.peft_config["method"] if getattr(model, "peft_config", None) else cfg.peft.method
        output = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{method}"
    output = Path(output)
    metrics = _train(cfg, output, resume=resume, data=data, callbacks=callbacks, model=model)
    trained = model
    if trained is None:  # the trainer built it: rebuild it from the run folder, as load_run does
        trained, _, _ = load_run(output)
    else:
        best = output / "checkpoints" / "best"
        if best.exists():
            load_into(trained, load_weights(best), str(best))
        trained.config = cfg
    return TrainResult(metrics, trained, output)


def evaluate(model: Recommender, data: RecData, split="test", k=(10,)) -> dict:
    """Full-ranking metrics of ``model`` on ``data`` for every cut-off in ``k``: ``{"HR@10": ..,
    "NDCG@10": ..}`` for one split, ``{split: {...}}`` for several (``split=("valid", "test")``).
    The evaluation settings (history excluded, precision, batch sizes) are the model's run's
    (``model.config``), else the package defaults."""
    cfg = getattr(model, "config", None) or load_config(overrides=["model.item_encoder=id"])
    device = next(model.parameters()).device
    splits = (split,) if isinstance(split, str) else tuple(split)
    out = _evaluate(model, model.content, data, device, splits, k, cfg.eval.batch_size,
                    cfg.eval.item_batch_size, cfg.data.exclude_history,
                    amp_dtype(cfg.train.amp, device), num_workers=cfg.train.num_workers,
                    nonfinite=cfg.train.nonfinite)
    return out[split] if isinstance(split, str) else out


def load_run(path: str | Path, allow_source_change: bool = False,
             device: torch.device | None = None) -> tuple[Recommender, RecData, Config]:
    """(model at its best checkpoint, data, config) of a finished run folder, adapter runs
    included: the model is rebuilt from the run's backbone and source checkpoint
    (``train.init_from``), which must be the ones it was trained on (``run.json``; refused
    otherwise, naming what changed, unless ``allow_source_change``)."""
    run = open_run(path, allow_source_change=allow_source_change, device=device)
    return run.model, run.data, run.cfg


__all__ = ["RecData", "load_config", "build_model", "train", "evaluate", "load_run", "recommend",
           "TrainResult", "Callback"]

"""Building a run: data + model + source checkpoint + PEFT + cache, shared by the trainer, the
cache builder and the evaluate command.

    run = build_run(cfg)          # Run(cfg, data, model, content, summary, device, amp)
    run.evaluate(("valid", "test"))

``prepare`` is the same without a device: (data, model, content, summary).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from . import peft
from .cache import attach as attach_cache
from .config import Config, load_config
from .data.split import RecData, build_data
from .errors import CheckpointError
from .evaluation.evaluator import evaluate
from .model import Recommender, build_model
from .runtime import distributed as dist
from .runtime.io import load_into, load_weights
from .runtime.logging import setup_logging
from .runtime.precision import amp_dtype

log = logging.getLogger("adapter4rec")

# Item-specific parameters: they belong to the source domain's items and never transfer.
ITEM_TABLES = ("item_encoder.table.",)


def resolve_checkpoint(path: str) -> Path:
    """A run folder (its best checkpoint), a checkpoint folder, or a weights file."""
    p = Path(path)
    for cand in (p / "checkpoints" / "best" / "model.safetensors",
                 p / "checkpoints" / ".old-best" / "model.safetensors",  # a save cut short
                 p / "model.safetensors", p):
        if cand.is_file():
            return cand
    raise CheckpointError(f"init_from: no checkpoint found at {p} (expected a run folder, a "
                          "checkpoint folder or a .safetensors file)")


def load_data(cfg: Config) -> RecData:
    d = cfg.data
    return build_data(d.path, d.users_file, d.items_file, d.min_seq_len, d.max_seq_len,
                      d.with_abstract, d.unknown_items)


def prepare(cfg: Config, data: RecData | None = None, content=None):
    """Data, model (+ source checkpoint when adapting, + PEFT) and content store for ``cfg``."""
    data = data or load_data(cfg)
    model, content = build_model(cfg, data, content)
    if cfg.train.init_from:
        src = resolve_checkpoint(cfg.train.init_from)
        kept = load_into(model, load_weights(src), str(src), skip_prefixes=ITEM_TABLES)
        log.info("initialised from %s (%d model keys kept as built)", src, len(kept))
    summary = peft.apply(model, cfg.peft.method, **cfg.peft.options)
    if not cfg.train.init_from and not all(p.requires_grad for p in model.user_encoder.parameters()):
        # Without a source checkpoint the user encoder is freshly initialised, not pretrained:
        # freezing it would leave a random network in place, so it trains whatever the method.
        for p in model.user_encoder.parameters():
            p.requires_grad_(True)
        summary = peft.summary(model)
        log.info("no train.init_from: the user encoder is not pretrained and trains fully")
    # iisan (and frozen with cache.frozen) read cached hidden states instead of running the backbone
    content = attach_cache(cfg, model, data, content)
    return data, model, content, summary


@dataclass
class Run:
    """Everything a run computes with, on its device."""

    cfg: Config
    data: RecData
    model: Recommender
    content: object
    summary: dict
    device: torch.device
    amp: torch.dtype | None

    def evaluate(self, splits=("valid", "test"), progress: bool = False) -> dict:
        """{split: {"HR@k", "NDCG@k"}} with the run's evaluation settings."""
        c = self.cfg
        return evaluate(self.model, self.content, self.data, self.device, splits, c.eval.k,
                        c.eval.batch_size, c.eval.item_batch_size, c.data.exclude_history,
                        self.amp, progress=progress, num_workers=c.train.num_workers,
                        nonfinite=c.train.nonfinite)


def build_run(cfg: Config, data: RecData | None = None, content=None, device=None) -> Run:
    """``prepare`` on this process's device (joining the process group under torchrun)."""
    device = device or dist.setup()
    data, model, content, summary = prepare(cfg, data, content)
    model.to(device)
    return Run(cfg, data, model, content, summary, device, amp_dtype(cfg.train.amp, device))


def evaluate_run(run: str | Path, split: str = "test", overrides: list[str] | None = None) -> dict:
    """Rebuild a run from its folder (config + backbone + init_from + its weights) and evaluate."""
    run = Path(run)
    cfg = load_config(run / "config.yaml", overrides)
    dist.setup()
    setup_logging()
    r = build_run(cfg)
    load_into(r.model, load_weights(run / "checkpoints" / "best"), str(run))
    return r.evaluate(("valid", "test") if split == "both" else (split,))

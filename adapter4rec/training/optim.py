"""Optimiser parameter groups and learning-rate schedules."""
from __future__ import annotations

import math

import torch

from ..config import Config


def param_groups(model, cfg: Config) -> list[dict]:
    """Three roles, each with its own learning rate: backbone, inserted modules, the rest."""
    tuned = getattr(model, "peft_tuned", set())
    groups = {"backbone": [], "peft": [], "rest": []}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        role = ("peft" if n in tuned or "peft_" in n else
                "backbone" if n.startswith("item_encoder.backbone.") else "rest")
        groups[role].append(p)
    lrs = {"backbone": cfg.train.lr_backbone, "peft": cfg.train.lr_peft, "rest": cfg.train.lr}
    return [{"params": ps, "lr": lrs[r], "name": r} for r, ps in groups.items() if ps]


def make_optimizer(model, cfg: Config) -> torch.optim.Optimizer:
    opt_cls = torch.optim.AdamW if cfg.train.optimizer == "adamw" else torch.optim.Adam
    return opt_cls(param_groups(model, cfg), weight_decay=cfg.train.weight_decay)


def make_scheduler(optimizer, t, total_steps: int):
    """The LambdaLR for ``train.scheduler`` (None for ``none``), stepped once per batch.

    linear_warmup: lr x step/warmup during warmup, then linear decay to 0 at ``total_steps``;
    cosine: the same warmup, then half a cosine down to 0 (transformers' schedules of those names).
    """
    if t.scheduler == "none":
        return None
    warm, total = t.warmup_steps, max(total_steps, 1)

    def factor(step: int) -> float:
        if step < warm:
            return step / max(1, warm)
        progress = min(1.0, (step - warm) / max(1, total - warm))
        if t.scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

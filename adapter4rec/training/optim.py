"""Optimiser parameter groups and learning-rate schedules."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import Config
from ..peft.prompt import SoftPrompt

ROLES = ("backbone", "peft", "rest")
# the config key of each role's learning rate (run.json param_groups records the roles that train)
LR_KEYS = {"backbone": "lr_backbone", "peft": "lr_peft", "rest": "lr"}


def embedding_parameters(model: nn.Module) -> set[int]:
    """``id`` of every embedding table of ``model``: the weight of each ``nn.Embedding`` (item ID
    tables, SASRec's position table ``pos``, BERT's word / position / token-type tables), the
    parameters held directly by a transformers ``*Embeddings`` module (ViT's ``cls_token`` and
    ``position_embeddings``; never those of its children, such as the patch projection or the
    LayerNorm), and a soft prompt's token rows (``peft.prompt.SoftPrompt``)."""
    found = set()
    for m in model.modules():
        cls = type(m)
        if isinstance(m, (nn.Embedding, SoftPrompt)) or (
                cls.__module__.startswith("transformers.") and cls.__name__.endswith("Embeddings")):
            found.update(id(p) for p in m.parameters(recurse=False))
    return found


def decays(p: torch.Tensor, is_embedding: bool, decay_embeddings: bool) -> bool:
    """The weight-decay rule: weight matrices (2-D and up) only, embedding tables only with
    ``decay_embeddings``; biases, norm gains and other 1-D parameters never."""
    return p.dim() >= 2 and (decay_embeddings or not is_embedding)


def param_groups(model, cfg: Config) -> list[dict]:
    """The optimiser's parameter groups: three roles, each with its own learning rate, each split
    by weight decay.

    Roles: ``backbone`` (the pretrained item-encoder backbone, ``train.lr_backbone``), ``peft``
    (inserted modules and the pretrained parameters a method tunes, ``train.lr_peft``), ``rest``
    (``train.lr``). Weight decay: ``train.weight_decay`` applies to trainable weight matrices
    (2-D and up) only, never to biases, LayerNorm gains or other 1-D parameters (as nanoGPT's
    ``configure_optimizers`` and transformers' Trainer), so tuned LayerNorm gains and BitFit biases
    are never pulled toward 0. Embedding tables (``embedding_parameters``) are decayed only with
    ``train.decay_embeddings``. Each group carries ``name`` (its role), ``decay`` (bool) and its
    own ``weight_decay`` (0 where ``decay`` is false). The order is fixed, roles in ``ROLES``
    order, the decayed group of a role before the other, parameters in ``named_parameters`` order,
    empty groups left out, so a checkpoint's optimiser state loads back into the same model.
    """
    t = cfg.train
    tuned = getattr(model, "peft_tuned", set())
    embeddings = embedding_parameters(model)
    groups = {(r, d): [] for r in ROLES for d in (True, False)}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        role = ("peft" if n in tuned or "peft_" in n else
                "backbone" if n.startswith("item_encoder.backbone.") else "rest")
        groups[role, decays(p, id(p) in embeddings, t.decay_embeddings)].append(p)
    lrs = {role: getattr(t, key) for role, key in LR_KEYS.items()}
    return [{"params": ps, "lr": lrs[r], "name": r, "decay": d,
             "weight_decay": t.weight_decay if d else 0.0}
            for (r, d), ps in groups.items() if ps]


def make_optimizer(model, cfg: Config) -> torch.optim.Optimizer:
    """AdamW or Adam over ``param_groups`` (each group carries its own ``weight_decay``)."""
    opt_cls = torch.optim.AdamW if cfg.train.optimizer == "adamw" else torch.optim.Adam
    return opt_cls(param_groups(model, cfg))


def make_scheduler(optimizer, t, total_steps: int):
    """The LambdaLR for ``train.scheduler`` (None for ``none``), stepped once per batch.

    linear_warmup: lr x step/warmup during warmup, then linear decay to 0 at ``total_steps``;
    cosine: the same warmup, then half a cosine down to 0 (transformers' schedules of those names),
    or down to ``min_lr_ratio`` x the peak (gpsd-rec's ``min_learning_rate``).
    """
    if t.scheduler == "none":
        return None
    warm, total = t.warmup_steps, max(total_steps, 1)

    def factor(step: int) -> float:
        if step < warm:
            return step / max(1, warm)
        progress = min(1.0, (step - warm) / max(1, total - warm))
        if t.scheduler == "cosine":  # down to min_lr_ratio of the peak (gpsd-rec: 0.1)
            floor = getattr(t, "min_lr_ratio", 0.0)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

"""``lora`` (Hu et al., 2021): low-rank updates ``W x + (alpha / r) B A x`` on chosen projections
(default query and value) of both towers, rank and alpha per tower.

Why Hugging Face ``peft``: it is well kept, wraps any ``nn.Linear`` (the transformers models and
our SASRec alike), keeps the pretrained weight as ``<module>.base_layer`` and starts B at zero (so
the model's output is unchanged at initialisation), and merges / unmerges for inference. The
reference used ``loralib``, whose ``lora.Linear`` was built fresh in place of the pretrained
projection, silently re-initialising its weight; ``peft`` only wraps. The adapter is injected under
the name ``peft_lora`` so its parameters (``...query.lora_A.peft_lora.weight``) carry the
``peft_`` mark the trainer uses for ``lr_peft``. ``peft`` is an optional dependency
(``pip install adapter4rec[lora]``).

Parameter names: injecting renames a wrapped projection's weight from ``...query.weight`` to
``...query.base_layer.weight``. Source checkpoints are loaded before ``apply``, adapter files after
it, so both always meet the names they were saved with; ``merge(model, unload=True)`` restores the
original names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from . import options as opt
from .registry import register

ADAPTER_NAME = "peft_lora"
ROLES = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")


def _targets(value, key="targets"):
    return opt._words(value, key, ROLES, None)


@dataclass
class LoraOptions(opt.Options):
    towers: list = opt.option(["item", "user"], opt.towers, "item, user or both")
    targets: list = opt.option(["query", "value"], _targets,
                               "projections to adapt: query, key, value, attn_out, ffn_in, ffn_out")
    layers: object = opt.option("all", opt.layers, "all, a list of layer indices, or {item: .., user: ..}")
    item_rank: int = opt.option(8, opt.count(), "rank r in the item encoder")
    user_rank: int = opt.option(4, opt.count(), "rank r in the user encoder")
    item_alpha: float = opt.option(16.0, opt.number(), "alpha in the item encoder (scale alpha / r)")
    user_alpha: float = opt.option(8.0, opt.number(), "alpha in the user encoder (scale alpha / r)")
    dropout: float = opt.option(0.0, opt.number(0.0, 1.0), "dropout on the LoRA input")
    # Hu et al. train the low-rank matrices only (no LayerNorm): off by default
    tune_layernorm: bool = opt.option(False, opt.boolean,
                                      "also tune the LayerNorms of the chosen layers of the towers "
                                      "(layers: all -> every LayerNorm of the towers)")


def _peft():
    try:
        import peft  # Hugging Face peft, not this package (absolute import)
    except ImportError:
        raise ConfigError("peft method 'lora' needs the Hugging Face `peft` package: "
                          "pip install 'adapter4rec[lora]' (or pip install peft)") from None
    return peft


@register("lora", LoraOptions, "low-rank updates of chosen projections (via Hugging Face peft)")
def insert_lora(model, towers, options) -> None:
    peft = _peft()
    for t in towers.values():
        names = [f"{t.layer_name(i)}.{t.sites.linears[role]}"
                 for i in t.select_layers(options.layers) for role in options.targets]
        for n in names:
            if not isinstance(t.module.get_submodule(n), nn.Linear):
                raise ConfigError(f"lora target {t.prefix}{n} is not a Linear layer")
        rank = options.item_rank if t.name == "item" else options.user_rank
        alpha = options.item_alpha if t.name == "item" else options.user_alpha
        config = peft.LoraConfig(
            r=rank, lora_alpha=alpha, lora_dropout=options.dropout, bias="none",
            # exact module names: a regex string is matched in full by peft
            target_modules="^(?:" + "|".join(re.escape(n) for n in names) + ")$")
        peft.inject_adapter_in_model(config, t.module, adapter_name=ADAPTER_NAME)
        for n, p in t.module.named_parameters():  # apply() froze the tower; keep it so
            p.requires_grad_(ADAPTER_NAME in n)


def lora_layers(model: nn.Module) -> list[nn.Module]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def merge(model: nn.Module, unload: bool = False) -> int:
    """Fold every LoRA update into its base weight (faster inference, same outputs up to float
    rounding). ``unload``: also put the plain Linear layers back (original parameter names; the
    model then no longer holds LoRA parameters and cannot be unmerged or switched). Returns the
    number of merged layers."""
    layers = lora_layers(model)
    if not layers:
        raise ConfigError("merge: the model has no LoRA layers (only peft method 'lora' merges)")
    for m in layers:
        if not m.merged:
            m.merge()
    if unload:
        parents = {id(m): (parent, name) for parent in model.modules()
                   for name, m in parent.named_children()}
        for m in layers:
            parent, name = parents[id(m)]
            setattr(parent, name, m.get_base_layer())
        if getattr(model, "peft_config", None):
            model.peft_config = {**model.peft_config, "merged": True}
    return len(layers)


def unmerge(model: nn.Module) -> int:
    layers = lora_layers(model)
    for m in layers:
        if m.merged:
            m.unmerge()
    return len(layers)


def is_merged(model: nn.Module) -> bool:
    return any(m.merged for m in lora_layers(model)) or bool(
        (getattr(model, "peft_config", None) or {}).get("merged"))


__all__ = ["LoraOptions", "merge", "unmerge", "is_merged", "lora_layers", "ROLES", "ADAPTER_NAME"]

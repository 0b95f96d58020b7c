"""The registry of PEFT methods and ``apply``.

A method is an options dataclass plus an ``insert`` function, registered by name with ``register``
(as Hugging Face ``peft`` registers its tuners). ``apply`` does what every method shares:

1. check the options (unknown or mistyped -> ``ConfigError`` naming ``peft.options.<key>``);
2. freeze the towers' pretrained weights (``full``: only the towers not listed in ``towers``);
   the item head ``item_encoder.project`` and everything outside the towers (ID tables) always
   train, as they are new in every run;
3. let the method insert its modules (names with a ``peft_`` prefix) in the listed towers, and mark
   the pretrained parameters it tunes (LayerNorm, biases) in ``model.peft_tuned``; with the option
   ``tune_layernorm`` (default true for the bottleneck adapters and Compacter, as Houlsby et al.
   and the study; false for LoRA, prompt tuning and K-Adapter) also the LayerNorms of the chosen
   layers (``Options.layernorm_layers``);
4. record ``model.peft_config`` (method + every option, resolved) so an adapter file can rebuild it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..errors import ConfigError
from . import options as opt
from .towers import Tower, layernorm_names, mark_tuned, selected, tower_of, towers as model_towers

log = logging.getLogger("adapter4rec")


@dataclass(frozen=True)
class Method:
    name: str
    options: type                  # an options.Options dataclass
    insert: Callable               # insert(model, towers: dict[str, Tower], options) -> None
    doc: str                       # one line for docs and `available`
    freeze: bool = True            # False only for `full`


REGISTRY: dict[str, Method] = {}

# The order of ``available()`` (docs, tables, test matrices): the study's methods first. A method
# registered elsewhere (a plugin) follows them in registration order.
ORDER = ("full", "frozen", "houlsby", "pfeiffer", "parallel", "kadapter", "compacter", "lora",
         "prompt", "layernorm", "bitfit", "iisan")


def register(name: str, options: type, doc: str, freeze: bool = True):
    """Decorator registering ``insert`` under ``name`` (adding a method touches one place)."""
    def deco(insert):
        if name in REGISTRY:
            raise ValueError(f"peft method {name!r} registered twice")
        REGISTRY[name] = Method(name, options, insert, doc, freeze)
        return insert
    return deco


def available() -> list[str]:
    """The registered method names: those of ``ORDER`` first, in that order, then any other."""
    rank = {n: i for i, n in enumerate(ORDER)}
    return sorted(REGISTRY, key=lambda n: rank.get(n, len(ORDER)))


def get(method: str) -> Method:
    if method not in REGISTRY:
        raise ConfigError(f"unknown peft.method {method!r}; available: {', '.join(available())}")
    return REGISTRY[method]


def defaults(method: str) -> dict:
    """Every option of ``method`` with its default value."""
    return get(method).options().to_dict()


def resolve(method: str, options: dict) -> dict:
    """``options`` as ``apply`` parses and records them (aliases, short forms such as ``positions:
    ffn`` -> ``['ffn']``, every default filled in), without a model."""
    return opt.parse(get(method).options, method, options).to_dict()


def apply(model: nn.Module, method: str = "full", **options) -> dict:
    """Insert ``method`` into ``model`` (a Recommender) and freeze; returns ``summary(model)``.

    Call it after the pretrained / source-domain weights are loaded. A model takes one method once:
    build a fresh model to apply another.
    """
    m = get(method)
    parsed = opt.parse(m.options, method, options)
    if getattr(model, "peft_config", None):
        raise ConfigError(f"this model already has peft method {model.peft_config['method']!r} "
                          "applied; build a fresh model to apply another")
    chosen = selected(model, getattr(parsed, "towers", list(model_towers(model))), method)
    frozen = model_towers(model) if m.freeze else {
        n: t for n, t in model_towers(model).items() if n not in chosen}
    for p in model.parameters():
        p.requires_grad_(True)
    for t in frozen.values():
        for p in t.module.parameters():
            p.requires_grad_(False)
    model.peft_tuned = set()
    device = next(model.parameters()).device
    m.insert(model, chosen, parsed)
    model.to(device)  # inserted modules join the model's device...
    model.train(model.training)  # ...and its train / eval mode
    if getattr(parsed, "tune_layernorm", False):
        mark_tuned(model, layernorm_names(chosen, parsed.layernorm_layers))
    model.peft_config = {"method": method, **parsed.to_dict()}
    s = summary(model)
    log.info("peft %s: %d of %d parameters train (item %d, user %d, other %d)", method,
             s["trainable"], s["total"], s["towers"]["item"]["trainable"],
             s["towers"]["user"]["trainable"], s["towers"]["other"]["trainable"])
    return s


def summary(model: nn.Module) -> dict:
    """Trainable / total parameters of the model and per tower (``item``, ``user``, ``other``), and
    how many parameters the method inserted (names containing ``peft_``)."""
    per = {t: {"trainable": 0, "total": 0} for t in ("item", "user", "other")}
    inserted = 0
    for name, p in model.named_parameters():
        t = per[tower_of(name)]
        t["total"] += p.numel()
        if p.requires_grad:
            t["trainable"] += p.numel()
        if "peft_" in name:
            inserted += p.numel()
    cfg = dict(getattr(model, "peft_config", None) or {"method": "full"})
    return {"method": cfg.pop("method"), "options": cfg,
            "trainable": sum(t["trainable"] for t in per.values()),
            "total": sum(t["total"] for t in per.values()),
            "inserted": inserted, "towers": per}


__all__ = ["Method", "REGISTRY", "register", "available", "get", "defaults", "resolve", "apply",
           "summary", "mark_tuned", "Tower", "ORDER"]

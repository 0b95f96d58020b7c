"""Baselines without inserted modules: ``full`` fine-tuning and ``frozen`` towers."""
from __future__ import annotations

from dataclasses import dataclass

from . import options as opt
from .registry import register


@dataclass
class FullOptions(opt.Options):
    towers: list = opt.option(["item", "user"], opt.towers,
                              "towers fine-tuned in full: item, user or both; a tower not listed is frozen")


@register("full", FullOptions, "fine-tune every parameter of the listed towers (and the rest)",
          freeze=False)
def insert_full(model, towers, options):
    """Nothing to insert: ``apply`` leaves the listed towers trainable."""


@dataclass
class FrozenOptions(opt.Options):
    pass


@register("frozen", FrozenOptions, "freeze both towers; train only the item head (and ID tables)")
def insert_frozen(model, towers, options):
    """Nothing to insert: ``apply`` froze both towers."""

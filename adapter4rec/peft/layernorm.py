"""``layernorm``: tune only the LayerNorm weights and biases of the listed towers. The same
selection serves ``tune_layernorm: true`` on any adapter method."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from . import options as opt
from .registry import mark_tuned, register


def layernorm_names(towers, layers="all") -> list[str]:
    """Recommender-level names of the pretrained LayerNorm parameters in ``towers``: every
    LayerNorm of a tower with ``layers: all``, else those inside the chosen layers."""
    names = []
    for t in towers.values():
        spec = layers.get(t.name, "all") if isinstance(layers, dict) else layers
        prefixes = None if spec == "all" else tuple(
            t.layer_name(i) + "." for i in t.select_layers(spec))
        for mname, m in t.module.named_modules():
            if not isinstance(m, nn.LayerNorm) or "peft_" in mname:
                continue
            if prefixes is not None and not (mname + ".").startswith(prefixes):
                continue
            names += [f"{t.prefix}{mname}.{p}" for p, _ in m.named_parameters(recurse=False)]
    return names


def tune_layernorms(model, towers, layers="all") -> None:
    mark_tuned(model, layernorm_names(towers, layers))


@dataclass
class LayerNormOptions(opt.Options):
    towers: list = opt.option(["item", "user"], opt.towers, "item, user or both")
    layers: object = opt.option("all", opt.layers, "all, or a list of layer indices (LayerNorms "
                                "outside the layers, e.g. embeddings, only with all)")


@register("layernorm", LayerNormOptions, "tune only LayerNorm weights and biases")
def insert_layernorm(model, towers, options):
    tune_layernorms(model, towers, options.layers)

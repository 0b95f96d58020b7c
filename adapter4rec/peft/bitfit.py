"""``bitfit``: tune only the bias terms of the listed towers (every ``bias`` parameter, LayerNorm
biases included, as Ben Zaken et al.)."""
from __future__ import annotations

from dataclasses import dataclass

from . import options as opt
from .registry import mark_tuned, register


def bias_names(towers, layers="all") -> list[str]:
    names = []
    for t in towers.values():
        spec = layers.get(t.name, "all") if isinstance(layers, dict) else layers
        prefixes = None if spec == "all" else tuple(
            t.layer_name(i) + "." for i in t.select_layers(spec))
        for n, _ in t.module.named_parameters():
            if n.rsplit(".", 1)[-1] != "bias" or "peft_" in n:
                continue
            if prefixes is None or n.startswith(prefixes):
                names.append(t.prefix + n)
    return names


@dataclass
class BitFitOptions(opt.Options):
    towers: list = opt.option(["item", "user"], opt.towers, "item, user or both")
    layers: object = opt.option("all", opt.layers, "all, or a list of layer indices (biases outside "
                                "the layers, e.g. embeddings LayerNorm, only with all)")


@register("bitfit", BitFitOptions, "tune only bias terms")
def insert_bitfit(model, towers, options):
    mark_tuned(model, bias_names(towers, options.layers))

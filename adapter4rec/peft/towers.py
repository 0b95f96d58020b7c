"""The two towers of a recommender (``item``: the pretrained item backbone, ``user``: SASRec), the
choice of towers and layers a method's options make, and the one helper that marks pretrained
parameters as tuned (LayerNorms, biases).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..encoders.sites import SiteMap, site_map
from ..errors import ConfigError


@dataclass
class Tower:
    """One tower of a recommender: ``item`` (the pretrained item backbone) or ``user`` (SASRec)."""

    name: str
    prefix: str            # parameter-name prefix in the recommender, with the trailing dot
    module: nn.Module

    @property
    def sites(self) -> SiteMap:
        return site_map(self.module)

    @property
    def hidden(self) -> int:
        config = getattr(self.module, "config", None)
        return config.hidden_size if config is not None else self.module.d

    @property
    def layer_list(self) -> nn.ModuleList:
        return self.module.get_submodule(self.sites.layers)

    def layer_name(self, i: int) -> str:
        return f"{self.sites.layers}.{i}"

    def select_layers(self, spec) -> list[int]:
        """``all`` or a list of indices (negative from the end) -> sorted unique indices."""
        if isinstance(spec, dict):
            spec = spec.get(self.name, "all")
        n = len(self.layer_list)
        if spec == "all":
            return list(range(n))
        out = set()
        for i in spec:
            if not -n <= i < n:
                raise ConfigError(f"peft.options.layers: layer {i} does not exist in the {self.name} "
                                  f"tower ({n} layers: 0..{n - 1}, or -1..-{n})")
            out.add(i % n)
        return sorted(out)


def towers(model: nn.Module) -> dict[str, Tower]:
    """The towers ``model`` has: ``item`` when its item encoder has a backbone, ``user`` always."""
    out = {}
    backbone = getattr(getattr(model, "item_encoder", None), "backbone", None)
    if backbone is not None:
        out["item"] = Tower("item", "item_encoder.backbone.", backbone)
    user = getattr(model, "user_encoder", None)
    if user is not None:
        out["user"] = Tower("user", "user_encoder.", user)
    return out


def selected(model: nn.Module, names: list[str], method: str) -> dict[str, Tower]:
    """The towers named in ``towers`` that the model has; none of them -> ConfigError."""
    have = towers(model)
    chosen = {n: have[n] for n in names if n in have}
    if not chosen:
        raise ConfigError(f"peft method '{method}': the model has no {' or '.join(names)} tower "
                          f"(it has: {', '.join(have) or 'none'}); an ID item encoder has no "
                          "pretrained item backbone")
    return chosen


def tower_of(name: str) -> str:
    """``item``, ``user`` or ``other`` for a parameter name of a recommender."""
    if name.startswith("item_encoder.backbone."):
        return "item"
    if name.startswith("user_encoder."):
        return "user"
    return "other"


# ------------------------------------------------------------------- tuning pretrained parameters

def parameter_names(towers: dict[str, Tower], layers, keep: Callable[[str, nn.Module, str], bool]) -> list[str]:
    """Recommender-level names of the pretrained parameters of ``towers`` that ``keep(module_name,
    module, parameter_name)`` accepts: in every module of a tower with ``layers: all``, else only
    inside the chosen layers. Inserted modules (``peft_`` names) never count."""
    names = []
    for t in towers.values():
        spec = layers.get(t.name, "all") if isinstance(layers, dict) else layers
        prefixes = None if spec == "all" else tuple(
            t.layer_name(i) + "." for i in t.select_layers(spec))
        for mname, m in t.module.named_modules():
            if "peft_" in mname or (prefixes is not None and not (mname + ".").startswith(prefixes)):
                continue
            names += [f"{t.prefix}{mname}.{p}" for p, _ in m.named_parameters(recurse=False)
                      if "peft_" not in p and keep(mname, m, p)]
    return names


def layernorm_names(towers: dict[str, Tower], layers="all") -> list[str]:
    """Weights and biases of the LayerNorms of ``towers`` (within ``layers``)."""
    return parameter_names(towers, layers, lambda mname, m, p: isinstance(m, nn.LayerNorm))


def bias_names(towers: dict[str, Tower], layers="all") -> list[str]:
    """Every ``bias`` parameter of ``towers`` (within ``layers``), LayerNorm biases included."""
    return parameter_names(towers, layers, lambda mname, m, p: p == "bias")


def mark_tuned(model: nn.Module, names) -> None:
    """Make the named pretrained parameters trainable and record them (trainer: ``lr_peft``)."""
    params = dict(model.named_parameters())
    for n in names:
        params[n].requires_grad_(True)
        model.peft_tuned.add(n)


__all__ = ["Tower", "towers", "selected", "tower_of", "parameter_names", "layernorm_names",
           "bias_names", "mark_tuned"]

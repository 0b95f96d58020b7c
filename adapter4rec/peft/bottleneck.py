"""Bottleneck adapters: one parameterised module with presets ``houlsby``, ``pfeiffer`` and
``parallel`` (as AdapterHub's ``BnConfig``), inserted by forward hooks on the output projections of
the site map.

    serial   (insertion: serial):   h = A(sub(x)),        A(z) = z + up(act(down(z)))
    parallel (insertion: parallel): h = sub(x) + f(x),    f(x) = up(act(down(x)))

``sub(x)`` is the sublayer's output projection (before the host's dropout, residual and LayerNorm)
and ``x`` the sublayer's input. The parallel form adds ``f(x)`` once; the reference added the
adapter's own skip as well, doubling the residual (see docs/differences.md).

Adapters are registered next to the projection they follow, e.g. BERT
``encoder.layer.3.attention.output.peft_adapter`` and ``encoder.layer.3.output.peft_adapter``, ViT
``layers.3.attention.peft_adapter`` / ``layers.3.mlp.peft_adapter``, SASRec ``blocks.1.attn.peft_adapter``
/ ``blocks.1.ffn.peft_adapter``; the pretrained parameter names do not change.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import nn

from . import options as opt
from .registry import register
from .towers import Tower

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


class Bottleneck(nn.Module):
    """``z + up(act(down(z)))`` with ``skip``, else ``up(act(down(z)))``; down/up any modules
    mapping hidden -> size -> hidden (Linear here, PHM layers for Compacter)."""

    def __init__(self, down: nn.Module, up: nn.Module, activation: str = "relu",
                 dropout: float = 0.0, skip: bool = True):
        super().__init__()
        self.down, self.up = down, up
        self.act = ACTIVATIONS[activation]()
        self.drop = nn.Dropout(dropout)
        self.skip = skip

    @classmethod
    def linear(cls, hidden: int, size: int, activation: str = "relu", init_std: float = 0.01,
               zero_init_up: bool = False, dropout: float = 0.0, skip: bool = True) -> "Bottleneck":
        """Linear down/up initialised N(0, init_std), zero biases; ``zero_init_up``: up starts at 0
        (the adapter is then exactly the identity, or adds exactly 0 in parallel)."""
        down, up = nn.Linear(hidden, size), nn.Linear(size, hidden)
        nn.init.normal_(down.weight, std=init_std)
        nn.init.zeros_(down.bias)
        if zero_init_up:
            nn.init.zeros_(up.weight)
        else:
            nn.init.normal_(up.weight, std=init_std)
        nn.init.zeros_(up.bias)
        return cls(down, up, activation, dropout, skip)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.drop(self.act(self.down(z))))
        return z + h if self.skip else h


# Hooks are module-level functions bound with functools.partial, so that copy.deepcopy of a model
# re-binds them to the copied adapters (a closure would keep pointing at the original ones).

def _serial_hook(adapter, module, args, output):
    return adapter(output)


def _stash_input_hook(adapter, index, keyword, module, args, kwargs):
    adapter.__dict__["_peft_input"] = args[index] if len(args) > index else kwargs[keyword]


def _parallel_hook(adapter, module, args, output):
    x = adapter.__dict__.pop("_peft_input", None)
    if x is None:
        raise RuntimeError("parallel adapter: the sublayer's input was not seen before its output "
                           "projection ran (was the projection called on its own?)")
    return output + adapter(x)


def insert_at_sites(towers: dict[str, Tower], layers, positions: list[str], insertion: str,
                    make: Callable[[Tower, bool], nn.Module]) -> list[str]:
    """Insert ``make(tower, skip)`` at every chosen (layer, position) of ``towers``; returns the
    names of the inserted modules (relative to each tower)."""
    names = []
    for t in towers.values():
        for i in t.select_layers(layers):
            layer = t.layer_list[i]
            for pos in positions:
                site = t.sites.sublayers[pos]
                out_path = site.output
                parent_path = out_path.rpartition(".")[0]
                parent, projection = layer.get_submodule(parent_path), layer.get_submodule(out_path)
                if hasattr(parent, "peft_adapter"):
                    raise RuntimeError(f"{t.layer_name(i)}.{parent_path} already holds an adapter")
                adapter = make(t, insertion == "serial")
                parent.add_module("peft_adapter", adapter)
                if insertion == "serial":
                    projection.register_forward_hook(partial(_serial_hook, adapter))
                else:
                    path, index, keyword = site.input
                    layer.get_submodule(path).register_forward_pre_hook(
                        partial(_stash_input_hook, adapter, index, keyword), with_kwargs=True)
                    projection.register_forward_hook(partial(_parallel_hook, adapter))
                names.append(f"{t.layer_name(i)}.{parent_path}.peft_adapter")
    return names


@dataclass
class BottleneckOptions(opt.Options):
    ALIASES = {"position": "positions"}

    towers: list = opt.option(["item", "user"], opt.towers, "item, user or both")
    positions: list = opt.option(["mha", "ffn"], opt.positions,
                                 "mha (after the attention output projection), ffn (after the FFN "
                                 "output projection) or both; alias: position")
    insertion: str = opt.option("serial", opt.choice("serial", "parallel"),
                                "serial: h = A(sub(x)); parallel: h = sub(x) + f(x)")
    layers: object = opt.option("all", opt.layers, "all, a list of layer indices, or {item: .., user: ..}")
    item_bottleneck: int = opt.option(64, opt.count(), "bottleneck size in the item encoder")
    user_bottleneck: int = opt.option(16, opt.count(), "bottleneck size in the user encoder")
    activation: str = opt.option("relu", opt.choice("relu", "gelu"), "relu or gelu")
    init_std: float = opt.option(0.01, opt.number(), "std of the N(0, std) init of down and up")
    zero_init_up: bool = opt.option(False, opt.boolean, "start up at zero (exact identity at init)")
    dropout: float = opt.option(0.0, opt.number(0.0, 1.0), "dropout on the bottleneck activations")
    tune_layernorm: bool = opt.option(False, opt.boolean, "also tune the towers' LayerNorms")


def make_linear_bottleneck(options) -> Callable[[Tower, bool], nn.Module]:
    def make(tower: Tower, skip: bool) -> nn.Module:
        size = options.item_bottleneck if tower.name == "item" else options.user_bottleneck
        return Bottleneck.linear(tower.hidden, size, options.activation, options.init_std,
                                 options.zero_init_up, options.dropout, skip)
    return make


def insert_bottleneck(model, towers, options) -> None:
    insert_at_sites(towers, options.layers, options.positions, options.insertion,
                    make_linear_bottleneck(options))


@dataclass
class HoulsbyOptions(BottleneckOptions):
    pass


@dataclass
class PfeifferOptions(BottleneckOptions):
    positions: list = opt.option(["ffn"], opt.positions,
                                 "ffn: one adapter per layer after the FFN (Pfeiffer et al.); mha: "
                                 "the reference repository's placement; alias: position")


@dataclass
class ParallelOptions(BottleneckOptions):
    insertion: str = opt.option("parallel", opt.choice("serial", "parallel"),
                                "parallel: h = sub(x) + f(x), f without its own skip")


register("houlsby", HoulsbyOptions,
         "serial bottleneck adapters after the attention and FFN output projections")(insert_bottleneck)
register("pfeiffer", PfeifferOptions,
         "one serial bottleneck adapter per layer, after the FFN")(insert_bottleneck)
register("parallel", ParallelOptions,
         "bottleneck adapters fed with the sublayer input, added to its output")(insert_bottleneck)

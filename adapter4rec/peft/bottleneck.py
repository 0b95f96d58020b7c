"""Bottleneck adapters: one parameterised module with presets ``houlsby``, ``pfeiffer`` and
``parallel`` (as AdapterHub's ``BnConfig`` with ``double_seq_bn``, ``seq_bn`` and ``par_bn``),
inserted by forward hooks on the site map's modules of the unchanged host.

With ``f(z) = scaling * up(act(down(z)))`` and a host sublayer ``out = LN(x + h)`` (post-LN: BERT,
SASRec; pre-LN ViT: ``out = x + h``, no LN), where ``h = drop(sub(.))`` is the sublayer's output
after the host's residual-branch dropout and ``x`` the residual branch, an adapter replaces ``h``:

    serial   (houlsby):  h -> h + f(h)                     out = LN(x + h + f(h))
    pfeiffer (serial, original_ln_before):
                         h -> h + f(LN(x + h))             out = LN(x + h + f(LN(x + h)))
    parallel:            h -> h + f(x_sub)                 out = LN(x + h + f(x_sub))

``x_sub`` is what the sublayer reads (BERT, SASRec: ``x``; ViT: the LayerNorm'ed state). In the
Pfeiffer form the host LayerNorm runs twice, with the same weights: once on ``x + h`` for the
adapter's input and once, as always, after the residual add (AdapterHub ``seq_bn``:
``original_ln_before`` and ``original_ln_after`` true, ``residual_before_ln`` true, no new
LayerNorm); pre-LN it is ``x + h + f(x + h)``. The parallel form adds ``f`` once; the reference
added the adapter's own skip as well, doubling the residual (see docs/differences.md).

Every form acts after the host's dropout, as AdapterHub, Houlsby's adapter-bert and the reference.
The hooks: the output projection's forward hook marks its site as the next to pass the dropout
(ViT calls one dropout module after both sublayers); the dropout's forward hook applies that
site's adapter; a forward pre-hook stashes the input a parallel / Pfeiffer adapter reads.

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

from ..errors import ConfigError
from . import options as opt
from .registry import register
from .towers import Tower

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


class Bottleneck(nn.Module):
    """``z + f(z)`` with ``skip``, else ``f(z)``; ``f(z) = scaling * up(drop(act(down(z))))``,
    down/up any modules mapping hidden -> size -> hidden (Linear here, PHM layers for Compacter)."""

    def __init__(self, down: nn.Module, up: nn.Module, activation: str = "relu",
                 dropout: float = 0.0, skip: bool = True, scaling: float = 1.0):
        super().__init__()
        self.down, self.up = down, up
        self.act = ACTIVATIONS[activation]()
        self.drop = nn.Dropout(dropout)
        self.skip, self.scaling = skip, scaling

    @classmethod
    def linear(cls, hidden: int, size: int, activation: str = "relu", init_std: float = 0.01,
               zero_init_up: bool = False, dropout: float = 0.0, skip: bool = True,
               scaling: float = 1.0) -> "Bottleneck":
        """Linear down/up initialised N(0, init_std) (untruncated, as the reference), zero biases;
        ``zero_init_up``: up starts at 0 (the adapter then adds exactly 0: identity at insertion)."""
        down, up = nn.Linear(hidden, size), nn.Linear(size, hidden)
        nn.init.normal_(down.weight, std=init_std)
        nn.init.zeros_(down.bias)
        if zero_init_up:
            nn.init.zeros_(up.weight)
        else:
            nn.init.normal_(up.weight, std=init_std)
        nn.init.zeros_(up.bias)
        return cls(down, up, activation, dropout, skip, scaling)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.drop(self.act(self.down(z))))
        if self.scaling != 1.0:
            h = h * self.scaling
        return z + h if self.skip else h

    def extra_repr(self) -> str:
        return f"skip={self.skip}, scaling={self.scaling}"


# Hooks are module-level functions bound with functools.partial, so that copy.deepcopy of a model
# re-binds them to the copied adapters (a closure would keep pointing at the original ones).
# Per-call state lives in the modules' __dict__ (not attributes: no submodule registration).

def _mark(adapter, dropout, module, args, output):
    """Output projection's hook: its output is the next to pass ``dropout``."""
    dropout.__dict__["_peft_next"] = adapter


def _stash(adapter, index, keyword, module, args, kwargs):
    adapter.__dict__["_peft_input"] = args[index] if len(args) > index else kwargs[keyword]


def _after_dropout(adapter, kind, layernorm, module, args, h):
    """Dropout's hook: ``h`` is the sublayer's output after the host's dropout."""
    if module.__dict__.get("_peft_next") is not adapter:
        return None  # another site's output (ViT's shared dropout), or no adapter here
    del module.__dict__["_peft_next"]
    if kind == "serial":
        return adapter(h)                            # h + f(h)
    x = adapter.__dict__.pop("_peft_input", None)
    if x is None:
        raise RuntimeError(f"{kind} adapter: the sublayer's input was not seen before its output "
                           "(was the projection called on its own?)")
    if kind == "parallel":
        return h + adapter(x)                        # h + f(x_sub)
    z = x + h                                        # pfeiffer: the host's residual add...
    return h + adapter(layernorm(z) if layernorm is not None else z)   # ...and its LayerNorm


def insert_at_sites(towers: dict[str, Tower], layers, positions: list[str], insertion: str,
                    make: Callable[[Tower, bool], nn.Module],
                    original_ln_before: bool = False) -> list[str]:
    """Insert ``make(tower, skip)`` at every chosen (layer, position) of ``towers`` (``skip``: the
    adapter adds its input, the plain serial form); returns the inserted modules' names."""
    kind = "parallel" if insertion == "parallel" else "pfeiffer" if original_ln_before else "serial"
    names = []
    for t in towers.values():
        for i in t.select_layers(layers):
            layer = t.layer_list[i]
            for pos in positions:
                site = t.sites.sublayers[pos]
                parent_path = site.output.rpartition(".")[0]
                parent = layer.get_submodule(parent_path)
                if hasattr(parent, "peft_adapter"):
                    raise RuntimeError(f"{t.layer_name(i)}.{parent_path} already holds an adapter")
                adapter = make(t, kind == "serial")
                parent.add_module("peft_adapter", adapter)
                dropout = layer.get_submodule(site.dropout)
                layer.get_submodule(site.output).register_forward_hook(partial(_mark, adapter, dropout))
                layernorm = None
                if kind != "serial":
                    path, index, keyword = site.input if kind == "parallel" else site.residual
                    layer.get_submodule(path).register_forward_pre_hook(
                        partial(_stash, adapter, index, keyword), with_kwargs=True)
                    if kind == "pfeiffer" and site.layernorm is not None:
                        layernorm = layer.get_submodule(site.layernorm)
                dropout.register_forward_hook(partial(_after_dropout, adapter, kind, layernorm))
                names.append(f"{t.layer_name(i)}.{parent_path}.peft_adapter")
    return names


@dataclass
class BottleneckOptions(opt.Options):
    ALIASES = {"position": "positions"}

    towers: list = opt.option(["item", "user"], opt.towers, "item, user or both")
    positions: list = opt.option(["mha", "ffn"], opt.positions,
                                 "mha (after the attention sublayer), ffn (after the FFN) or both; "
                                 "alias: position")
    insertion: str = opt.option("serial", opt.choice("serial", "parallel"),
                                "serial: the adapter transforms the sublayer's output h; parallel: "
                                "h + f(sublayer input)")
    original_ln_before: bool = opt.option(
        False, opt.boolean, "serial only: the adapter reads LN(x + h), the sublayer's output after "
        "the host's residual add and LayerNorm, and adds to h (Pfeiffer; AdapterHub seq_bn)")
    layers: object = opt.option("all", opt.layers, "all, a list of layer indices, or {item: .., user: ..}")
    item_bottleneck: int = opt.option(64, opt.count(), "bottleneck size in the item encoder")
    user_bottleneck: int = opt.option(16, opt.count(), "bottleneck size in the user encoder")
    activation: str = opt.option("relu", opt.choice("relu", "gelu"), "relu or gelu")
    init_std: float = opt.option(0.01, opt.number(),
                                 "std of the (untruncated) N(0, std) init of down and up")
    zero_init_up: bool = opt.option(False, opt.boolean, "start up at zero (exact identity at init)")
    scaling: float = opt.option(1.0, opt.number(), "s in f = s * up(act(down(.))) (He et al.: 4)")
    dropout: float = opt.option(0.0, opt.number(0.0, 1.0), "dropout on the bottleneck activations")
    # Houlsby et al. (and the study) tune the towers' LayerNorms along with the adapters
    tune_layernorm: bool = opt.option(True, opt.boolean,
                                      "also tune the LayerNorms of the chosen layers of the towers "
                                      "(layers: all -> every LayerNorm of the towers)")

    def __post_init__(self):
        if self.original_ln_before and self.insertion == "parallel":
            raise ConfigError("peft.options.original_ln_before applies to serial adapters only "
                              "(insertion: serial); a parallel adapter reads the sublayer's input")


def make_linear_bottleneck(options) -> Callable[[Tower, bool], nn.Module]:
    def make(tower: Tower, skip: bool) -> nn.Module:
        size = options.item_bottleneck if tower.name == "item" else options.user_bottleneck
        return Bottleneck.linear(tower.hidden, size, options.activation, options.init_std,
                                 options.zero_init_up, options.dropout, skip, options.scaling)
    return make


def insert_bottleneck(model, towers, options) -> None:
    insert_at_sites(towers, options.layers, options.positions, options.insertion,
                    make_linear_bottleneck(options), options.original_ln_before)


@dataclass
class HoulsbyOptions(BottleneckOptions):
    pass


@dataclass
class PfeifferOptions(BottleneckOptions):
    positions: list = opt.option(["ffn"], opt.positions,
                                 "ffn: one adapter per layer, after the FFN (Pfeiffer et al.); mha: "
                                 "after the attention; alias: position")
    original_ln_before: bool = opt.option(
        True, opt.boolean, "the adapter reads LN(x + h), the sublayer's output after the host's "
        "residual add and LayerNorm (Pfeiffer; false: the houlsby form)")


@dataclass
class ParallelOptions(BottleneckOptions):
    insertion: str = opt.option("parallel", opt.choice("serial", "parallel"),
                                "parallel: h + f(sublayer input), f without its own skip")


register("houlsby", HoulsbyOptions,
         "serial bottleneck adapters after the attention and FFN sublayers")(insert_bottleneck)
register("pfeiffer", PfeifferOptions,
         "one bottleneck adapter per layer reading the FFN block's LayerNorm'ed output")(insert_bottleneck)
register("parallel", ParallelOptions,
         "bottleneck adapters fed with the sublayer input, added to its output")(insert_bottleneck)

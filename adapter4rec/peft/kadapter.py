"""``kadapter`` (K-Adapter, Wang et al., 2021): a small side transformer reading chosen hidden layers
of the host (default the first and the last), combined with the host's output by a learned
projection.

For each chosen layer k (in order), with ``s_0 = 0``:

    x_k = h_k + s_{k-1};   s_k = x_k + up_k(blocks_k(down_k(x_k)))
    output = combine([host_output ; s_last])          combine: Linear(2 hidden -> hidden)

``blocks_k`` are ``side_layers`` SASRec blocks (``adapter4rec.encoders.sasrec.Block``) of width
``item_bottleneck`` / ``user_bottleneck``. Where the host is causal (SASRec) the side transformer is
causal too, with the host's padding mask; the reference's side transformer attended to every
position and leaked future items into a user's representation. In the bidirectional item encoder
(BERT) it uses the token padding mask, in ViT no mask.

``combine`` starts as [I | 0] with a zero bias: the output equals the host's at initialisation and
the side network enters as training moves the zero block (the reference's randomly initialised
projection discarded the pretrained representation at the start).

Registered as ``<tower>.peft_kadapter``; hooks capture the chosen layers' outputs and the mask and
replace the tower's output (``last_hidden_state`` for transformers models).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ..encoders.sasrec import NEG, Block
from ..errors import ConfigError
from . import options as opt
from .registry import register


@dataclass
class KAdapterOptions(opt.Options):
    towers: list = opt.option(["item", "user"], opt.towers, "item, user or both")
    layers: object = opt.option([0, -1], opt.layers,
                                "host layers read, in order (default first and last; -1: last)")
    item_bottleneck: int = opt.option(64, opt.count(), "side transformer width in the item encoder")
    user_bottleneck: int = opt.option(16, opt.count(), "side transformer width in the user encoder")
    side_layers: int = opt.option(2, opt.count(), "transformer blocks per chosen layer")
    heads: int = opt.option(2, opt.count(), "attention heads of the side blocks")
    dropout: float = opt.option(0.1, opt.number(0.0, 1.0), "dropout in the side blocks")
    init_std: float = opt.option(0.01, opt.number(), "std of the N(0, std) init of down/up projections")
    tune_layernorm: bool = opt.option(False, opt.boolean, "also tune every LayerNorm of the towers")

    @property
    def layernorm_layers(self):
        return "all"  # `layers` are the layers read, not a place to tune


class KAdapter(nn.Module):
    def __init__(self, hidden: int, size: int, n_read: int, side_layers: int, heads: int,
                 dropout: float, init_std: float, causal: bool):
        super().__init__()
        if size % heads:
            raise ConfigError(f"peft.options.heads: {heads} must divide the side width {size}")
        self.causal = causal
        self.down = nn.ModuleList(nn.Linear(hidden, size) for _ in range(n_read))
        self.up = nn.ModuleList(nn.Linear(size, hidden) for _ in range(n_read))
        for lin in (*self.down, *self.up):
            nn.init.normal_(lin.weight, std=init_std)
            nn.init.zeros_(lin.bias)
        self.blocks = nn.ModuleList(
            nn.ModuleList(Block(size, heads, dropout) for _ in range(side_layers)) for _ in range(n_read))
        self.combine = nn.Linear(2 * hidden, hidden)
        with torch.no_grad():
            self.combine.weight.zero_()
            self.combine.weight[:, :hidden].copy_(torch.eye(hidden))
            self.combine.bias.zero_()
        self.__dict__["_hidden"] = {}
        self.__dict__["_mask"] = None

    def bias(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        """Additive attention bias [B, 1, L, L] (finite NEG, as SASRec) or None (attend to all)."""
        n = x.shape[1]
        visible = None
        if self.causal:
            visible = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()[None, None]
        if mask is not None:
            m = mask.bool()[:, None, None, :]
            visible = m if visible is None else visible & m
        if visible is None:
            return None
        return torch.zeros(visible.shape, dtype=x.dtype, device=x.device).masked_fill(~visible, NEG)

    def side(self, hiddens: list[torch.Tensor], mask: torch.Tensor | None) -> torch.Tensor:
        s = 0
        bias = None
        for k, h in enumerate(hiddens):
            x = h + s
            z = self.down[k](x)
            if bias is None:
                bias = self.bias(z, mask)
            for block in self.blocks[k]:
                z = block(z, bias)
            s = x + self.up[k](z)
        return s

    def forward(self, host: torch.Tensor, hiddens: list[torch.Tensor],
                mask: torch.Tensor | None) -> torch.Tensor:
        return self.combine(torch.cat([host, self.side(hiddens, mask).to(host.dtype)], -1))


def _capture_layer(kad: KAdapter, slot: int, module, args, output):
    kad._hidden[slot] = output[0] if isinstance(output, tuple) else output


def _capture_mask(kad: KAdapter, index: int | None, keyword: str | None, module, args, kwargs):
    if keyword is None:
        kad.__dict__["_mask"] = None
    else:
        kad.__dict__["_mask"] = args[index] if len(args) > index else kwargs.get(keyword)


def _combine(kad: KAdapter, module, args, output):
    hiddens = [kad._hidden.pop(k) for k in range(len(kad.down))]
    mask, kad.__dict__["_mask"] = kad._mask, None
    if isinstance(output, torch.Tensor):
        return kad(output, hiddens, mask)
    output.last_hidden_state = kad(output.last_hidden_state, hiddens, mask)
    return output


# how each family receives its padding mask: (positional index, keyword) or None (no mask)
MASK_ARG = {"bert": (1, "attention_mask"), "sasrec": (1, "mask"), "vit": (None, None)}


@register("kadapter", KAdapterOptions,
          "side transformer over chosen hidden layers, combined with the output by a projection")
def insert_kadapter(model, towers, options) -> None:
    for t in towers.values():
        read = t.select_layers(options.layers)
        size = options.item_bottleneck if t.name == "item" else options.user_bottleneck
        kad = KAdapter(t.hidden, size, len(read), options.side_layers, options.heads,
                       options.dropout, options.init_std, causal=t.sites.causal)
        t.module.add_module("peft_kadapter", kad)
        for slot, i in enumerate(read):
            t.layer_list[i].register_forward_hook(partial(_capture_layer, kad, slot))
        index, keyword = MASK_ARG[t.sites.family]
        t.module.register_forward_pre_hook(partial(_capture_mask, kad, index, keyword), with_kwargs=True)
        t.module.register_forward_hook(partial(_combine, kad))


__all__ = ["KAdapterOptions", "KAdapter"]

"""``compacter`` (Karimi Mahabadi et al., 2021): bottleneck adapters whose down/up projections are
PHM layers -- a weight built as a sum of Kronecker products

    W = sum_{i=1..n} A_i (x) B_i,      A_i: n x n "rule" matrices shared by every PHM layer of a tower,
                                       B_i = s_i t_i: low-rank (rank 1 by default) and per layer,

placed where Houlsby adapters go (AdapterHub's ``compacter``: ``double_seq_bn`` with PHM layers), with
the adapter's skip connection and every placement option of the bottleneck adapters
(``adapter4rec.peft.bottleneck``: after the host's dropout; ``positions``, ``insertion``,
``original_ln_before`` for Compacter++'s ``seq_bn`` placement, ``scaling``). The up projection's
right factors start at zero, so the adapter is exactly the identity at initialisation and the
pretrained function is kept (``zero_init_up: false`` starts it small instead). As the bottleneck
adapters, it tunes the chosen layers' LayerNorms by default (``tune_layernorm``).

The shared rules of a tower are one parameter, ``<tower>.peft_phm_rules.weight`` [n, n, n].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from . import options as opt
from .bottleneck import BottleneckOptions, Bottleneck, insert_at_sites
from .registry import register


class PHMRules(nn.Module):
    """The n rule matrices A_1..A_n shared by all PHM layers of one tower."""

    # held by the backbone but used only by the adapters inside its layers: it does not make the
    # layers below them trainable (encoders.backbone.lowest_trainable_layer; the prefix cache)
    used_inside_layers = True

    def __init__(self, n: int, init_std: float = 0.01):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, n, n))
        nn.init.normal_(self.weight, std=init_std)


class PHMLinear(nn.Module):
    """``x @ W + b`` with W = sum_i kron(A_i, s_i @ t_i) of shape [in, out]."""

    def __init__(self, rules: PHMRules, in_features: int, out_features: int, rank: int = 1,
                 zero_init: bool = False):
        super().__init__()
        n = rules.weight.shape[0]
        if in_features % n or out_features % n:
            raise ConfigError(f"peft.options.phm_dim: {n} must divide the PHM layer sizes "
                              f"({in_features} -> {out_features})")
        # a reference, not a submodule: the rules are registered once, on the tower
        self._rules = (rules,)
        self.in_features, self.out_features = in_features, out_features
        p, q = in_features // n, out_features // n
        self.s = nn.Parameter(torch.empty(n, p, rank))
        self.t = nn.Parameter(torch.empty(n, rank, q))
        self.bias = nn.Parameter(torch.zeros(out_features))
        for i in range(n):  # glorot-uniform factors, as Compacter
            nn.init.xavier_uniform_(self.s.data[i])
            nn.init.xavier_uniform_(self.t.data[i])
        if zero_init:
            nn.init.zeros_(self.t)

    @property
    def rules(self) -> torch.Tensor:
        return self._rules[0].weight

    def weight(self) -> torch.Tensor:
        a = self.rules                                  # [n, n, n]: A_i[a, c]
        b = self.s @ self.t                             # [n, p, q]: B_i[b, d]
        # W[a*p + b, c*q + d] = sum_i A_i[a, c] B_i[b, d]
        return torch.einsum("iac,ibd->abcd", a, b).reshape(self.in_features, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight().to(x.dtype) + self.bias.to(x.dtype)


@dataclass
class CompacterOptions(BottleneckOptions):
    activation: str = opt.option("gelu", opt.choice("relu", "gelu"), "relu or gelu (Compacter: gelu)")
    zero_init_up: bool = opt.option(True, opt.boolean,
                                    "up projection starts at zero (exact identity at init)")
    init_std: float = opt.option(0.01, opt.number(), "std of the N(0, std) init of the shared rules")
    phm_dim: int = opt.option(4, opt.count(), "n: Kronecker products per PHM layer (divides the sizes)")
    phm_rank: int = opt.option(1, opt.count(), "rank of the per-layer factors B_i = s_i t_i")


@register("compacter", CompacterOptions,
          "Houlsby-placed adapters with PHM (Kronecker-product) projections, shared rules")
def insert_compacter(model, towers, options) -> None:
    rules = {}
    for t in towers.values():
        r = PHMRules(options.phm_dim, options.init_std)
        t.module.add_module("peft_phm_rules", r)
        rules[t.name] = r

    def make(tower, skip: bool) -> nn.Module:
        size = options.item_bottleneck if tower.name == "item" else options.user_bottleneck
        r = rules[tower.name]
        down = PHMLinear(r, tower.hidden, size, options.phm_rank)
        up = PHMLinear(r, size, tower.hidden, options.phm_rank, zero_init=options.zero_init_up)
        return Bottleneck(down, up, options.activation, options.dropout, skip, options.scaling)

    insert_at_sites(towers, options.layers, options.positions, options.insertion, make,
                    options.original_ln_before)


__all__ = ["PHMRules", "PHMLinear", "CompacterOptions"]

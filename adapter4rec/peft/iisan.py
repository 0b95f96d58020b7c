"""``iisan`` (Fu et al., SIGIR 2024): decoupled side networks over the frozen backbone's per-layer
hidden states.

Nothing is inserted into the backbone. For each modality of the item (text, image) an *intra-modal*
side network is a chain of bottleneck blocks; block ``i`` reads a learned gated mix of the previous
block's output and the pooled (CLS by default) hidden state of one backbone layer::

    s_0 = h_0                                   (embedding output)
    s_i = Block_i(g_i * s_{i-1} + (1 - g_i) * h_{l_i}),   g_i = sigmoid(gate_i)
    Block(x) = LayerNorm(x + up(act(down(x))))

``l_1 < l_2 < ...`` are the layers read: with LayerDrop (``layer_stride: 2``, the default) every
other layer, always ending at the last one (BERT-base: 2, 4, ..., 12 -> 6 blocks). When the item
has two modalities an *inter-modal* side network of the same shape reads the sum of the two
modalities' states (aligned by a linear map when their widths differ). The outputs of all side
networks are concatenated and fused into the item vector by ``Linear(-> d) + GELU`` (the item head
of every other method has the same form).

Because the backbone is frozen and its states never depend on trainable parameters, they can be
computed once: with ``cache.enabled`` (the default) the trainer reads them from the hidden-state
cache (``adapter4rec.cache``) and the backbone never runs during training or evaluation. Without the
cache the backbone runs every step, in eval mode (no dropout, so both paths see the same states)
and without gradient.

The side network sits in the item encoder's ``peft_side`` slot (``encoders.base.ItemEncoder``),
which routes item content through it. The user encoder trains in full (as in IISAN) unless ``towers`` leaves ``user`` out.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..encoders.sites import layer_list
from ..errors import ConfigError
from . import options as opt
from .bottleneck import Bottleneck
from .registry import register

TEXT_KEYS = ("input_ids", "attention_mask")
IMAGE_KEYS = ("pixels",)
LAST = -1  # "layer" -1: the backbone's pooled output (last_hidden_state, after ViT's final LN)


def _towers(value, key="towers"):
    value = opt.towers(value, key)
    if "item" not in value:
        raise ConfigError(f"peft.options.{key}: iisan's side network reads the item backbone; "
                          "towers must include item (add user to also train the user encoder)")
    return value


@dataclass
class IISANOptions(opt.Options):
    towers: list = opt.option(["item", "user"], _towers,
                              "item (side networks) and optionally user (user encoder trained in full)")
    bottleneck: int = opt.option(64, opt.count(), "bottleneck size of every side block")
    layer_stride: int = opt.option(2, opt.count(),
                                   "LayerDrop: read every n-th backbone layer, ending at the last "
                                   "(2: every other layer, as IISAN; 1: all)")
    inter: bool = opt.option(True, opt.boolean,
                             "an inter-modal side network when the item has two modalities")
    activation: str = opt.option("gelu", opt.choice("relu", "gelu"), "relu or gelu")
    gate_init: float = opt.option(0.0, opt.number(-1e9),
                                  "initial gate logit (0: each block starts with an even mix)")
    init_std: float = opt.option(0.01, opt.number(), "std of the N(0, std) init of down and up")
    dropout: float = opt.option(0.1, opt.number(0.0, 1.0), "dropout on the bottleneck activations")


def read_layers(n_layers: int, stride: int) -> list[int]:
    """0 (embeddings) and every ``stride``-th layer counted back from the last: the states read."""
    return [0] + sorted(range(n_layers, 0, -stride))


class SideBlock(nn.Module):
    """``LayerNorm(x + up(act(down(x))))`` on pooled [n, hidden] states."""

    def __init__(self, hidden: int, size: int, activation: str, init_std: float, dropout: float):
        super().__init__()
        self.adapter = Bottleneck.linear(hidden, size, activation, init_std, dropout=dropout)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.adapter(x))


class SideChain(nn.Module):
    """One side network: ``s_i = Block_i(g_i * s_{i-1} + (1 - g_i) * h_i)`` over [n, 1 + k, hidden]."""

    def __init__(self, hidden: int, blocks: int, options: IISANOptions):
        super().__init__()
        self.gates = nn.Parameter(torch.full((blocks,), float(options.gate_init)))
        self.blocks = nn.ModuleList(
            SideBlock(hidden, options.bottleneck, options.activation, options.init_std, options.dropout)
            for _ in range(blocks))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        s = states[:, 0]
        gates = torch.sigmoid(self.gates)
        for i, block in enumerate(self.blocks):
            s = block(gates[i] * s + (1 - gates[i]) * states[:, i + 1])
        return s


class SideNetwork(nn.Module):
    """Intra-modal chains (one per modality), an inter-modal chain for two modalities, and the fusion
    ``Linear(-> d) + GELU`` of their outputs into the item vector.

    ``layers[m]`` are the backbone layers modality ``m`` reads (0 = embeddings), ``widths[m]`` its
    hidden size; ``forward`` takes ``{m: [n, len(layers[m]), widths[m]]}``.
    """

    def __init__(self, layers: dict[str, list[int]], widths: dict[str, int], d: int,
                 options: IISANOptions):
        super().__init__()
        self.modalities = list(layers)
        self.layers = {m: list(v) for m, v in layers.items()}
        self.intra = nn.ModuleDict({m: SideChain(widths[m], len(layers[m]) - 1, options)
                                    for m in self.modalities})
        out = sum(widths.values())
        self.inter = None
        if options.inter and len(self.modalities) == 2:
            a, b = self.modalities
            if len(layers[a]) != len(layers[b]):
                raise ConfigError(f"iisan: the {a} backbone gives {len(layers[a]) - 1} side blocks and "
                                  f"the {b} backbone {len(layers[b]) - 1}; the inter-modal side network "
                                  "needs as many of each: choose peft.options.layer_stride so they "
                                  "match, or set peft.options.inter: false")
            common = widths[a]
            self.align = nn.ModuleDict({m: nn.Linear(widths[m], common) for m in self.modalities
                                        if widths[m] != common})
            self.inter = SideChain(common, len(layers[a]) - 1, options)
            out += common
        self.fuse = nn.Sequential(nn.Linear(out, d), nn.GELU())

    def forward(self, states: dict[str, torch.Tensor]) -> torch.Tensor:
        dtype = self.fuse[0].weight.dtype
        states = {m: states[m].to(dtype) for m in self.modalities}  # cached states are fp16 / bf16
        parts = [self.intra[m](states[m]) for m in self.modalities]
        if self.inter is not None:
            mixed = sum(self.align[m](s) if m in self.align else s for m, s in states.items())
            parts.append(self.inter(mixed))
        return self.fuse(torch.cat(parts, -1))

    def encode(self, item_encoder: nn.Module, content: dict) -> torch.Tensor:
        """Item vectors from cached states (``hidden`` / ``hidden_<modality>`` in ``content``) or,
        without a cache, from a frozen-backbone pass over the items' tokens / pixels."""
        if any(k.startswith("hidden") for k in content):
            return self(cached_states(content, self.modalities))
        encoders = modal_encoders(item_encoder)
        return self({m: layer_states(encoders[m], content, self.layers[m]) for m in self.modalities})


def cached_states(content: dict, modalities: list[str]) -> dict[str, torch.Tensor]:
    if len(modalities) == 1 and "hidden" in content:
        return {modalities[0]: content["hidden"]}
    return {m: content[f"hidden_{m}"] for m in modalities}


def modality_of(encoder: nn.Module) -> str:
    model_type = getattr(getattr(getattr(encoder, "backbone", None), "config", None), "model_type", "")
    return "image" if model_type in ("vit", "vit_mae") else "text"


def modal_encoders(item_encoder: nn.Module) -> dict[str, nn.Module]:
    """{modality: content encoder} of an item encoder (one, or ``encoders`` of a multimodal one)."""
    encoders = getattr(item_encoder, "encoders", None)
    if encoders is not None:
        return dict(encoders.items())
    if getattr(item_encoder, "backbone", None) is None:
        raise ConfigError("peft method 'iisan' needs a pretrained item backbone (text or image "
                          "items); an ID item encoder has none")
    return {modality_of(item_encoder): item_encoder}


def _pool(encoder: nn.Module, hidden: torch.Tensor, content: dict, modality: str) -> torch.Tensor:
    if encoder.pooling == "cls":
        return hidden[:, 0]
    if modality == "image":  # as ImageItemEncoder: mean over the tokens after CLS
        return hidden[:, 1:].mean(1)
    return encoder.pool(hidden, content["attention_mask"])


@torch.no_grad()
def layer_states(encoder: nn.Module, content: dict, layers: list[int]) -> torch.Tensor:
    """[n, len(layers), hidden]: the pooled output of the embeddings (0), of layers 1..L, or of the
    whole backbone (-1: ``last_hidden_state``, after ViT's final LayerNorm) for items ``content``.

    The encoder runs once, in eval mode (deterministic states: the same as the cache holds), with
    forward hooks collecting the layers' outputs.
    """
    if getattr(encoder, "backbone_released", False):
        raise RuntimeError("this item encoder's backbone was released once the hidden-state cache was "
                           "attached (cache.release_backbone): item content must come from the cache")
    backbone = encoder.backbone
    modality = modality_of(encoder)
    keys = IMAGE_KEYS if modality == "image" else TEXT_KEYS
    inputs = {k: content[k] for k in keys}
    layers_of = layer_list(backbone)
    got: dict[int, torch.Tensor] = {}

    def keep(i):
        def hook(module, args, out):
            if i == LAST:
                out = out.last_hidden_state
            got[i] = out[0] if isinstance(out, tuple) else out
        return hook

    hooks = []
    for i in layers:
        module = (backbone if i == LAST else backbone.embeddings if i == 0 else layers_of[i - 1])
        hooks.append(module.register_forward_hook(keep(i)))
    was_training = encoder.training
    encoder.eval()
    try:
        encoder(**inputs)
    finally:
        for h in hooks:
            h.remove()
        encoder.train(was_training)
    return torch.stack([_pool(encoder, got[i], inputs, modality) for i in layers], 1)


def geometry(item_encoder: nn.Module, stride: int) -> tuple[dict[str, list[int]], dict[str, int]]:
    """Layers read and hidden width of each modality of ``item_encoder``."""
    layers, widths = {}, {}
    for m, enc in modal_encoders(item_encoder).items():
        n = len(layer_list(enc.backbone))
        layers[m] = read_layers(n, stride)
        widths[m] = enc.backbone.config.hidden_size
    return layers, widths


@register("iisan", IISANOptions,
          "decoupled side networks over the frozen backbone's per-layer states (cacheable)")
def insert_iisan(model, towers, options) -> None:
    enc = model.item_encoder
    layers, widths = geometry(enc, options.layer_stride)
    for m, e in modal_encoders(enc).items():  # apply() froze the item tower; a multimodal item
        for p in e.backbone.parameters():    # encoder has its backbones outside the towers
            p.requires_grad_(False)
        project = getattr(e, "project", None)
        if project is not None:  # the side network's fusion layer is the item head
            project.requires_grad_(False)
    enc.peft_side = SideNetwork(layers, widths, model.user_encoder.d, options)
    if "user" in options.towers:
        model.user_encoder.requires_grad_(True)


def side_network(model) -> SideNetwork | None:
    return getattr(getattr(model, "item_encoder", None), "peft_side", None)


__all__ = ["IISANOptions", "SideNetwork", "SideChain", "SideBlock", "layer_states", "read_layers",
           "modal_encoders", "modality_of", "side_network", "LAST"]

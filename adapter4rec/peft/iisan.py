"""``iisan`` (Fu et al., SIGIR 2024): decoupled side networks over the frozen backbone's per-layer
hidden states, as GAIR-Lab/IISAN (``Code_Cached/model/model.py`` ``IISANAdaptedMModel`` and
``ModelMM``, ``Code_Cached/model/modules.py`` ``AdapterBlock``; commit 67f5c1f).

Nothing is inserted into the backbone. ``h_l`` is the pooled (CLS by default) hidden state of
backbone layer ``l`` (0: the embedding output); the layers read are ``0 = l_0 < l_1 < ... < l_K``,
with LayerDrop (``layer_stride: 2``, the default) every other layer, always ending at the last one
(BERT-base: 0, 2, 4, ..., 12). For each modality of the item an *intra-modal* side network is a
chain of bottleneck blocks, block ``i`` reading a gated mix of one backbone layer and the previous
block's output (the defaults, as the reference)::

    s_0 = 0;   s_(i+1) = Block_i(g_i * h_(l_i) + (1 - g_i) * s_i),   i = 0..K   (K + 1 blocks)
    g_i = sigmoid(gate_i / T),   T = gate_temperature = 0.1,   gate_i starts at gate_init = 0
    Block(x) = x + up(relu(down(x)))        (down: hidden -> bottleneck 64; no LayerNorm, no dropout)

With ``embedding_block: false`` (the reference's ``remove_first``) an intra chain starts at
``h_0`` and has K blocks, over ``l_1 .. l_K``; the inter chain then reads ``l_1 .. l_K``, from 0.
When the item has two modalities (text ``t`` and image ``v``) an *inter-modal* side network reads
both modalities' states (the image ones mapped to the text width by a Linear when the widths
differ)::

    m_0 = 0;   m_(i+1) = Block_i(m_i + c_i * h^v_(l_i) + (1 - c_i) * h^t_(l_i))
    c_i = sigmoid(gate_i / T)

The item vector fuses the last states through each modality's item head (``project``'s Linear,
which then trains; its GELU is not applied) and a new combining layer, with no activation::

    e_t = head_t(fc_t(s^t)),  e_v = head_v(fc_v(s^v)),  e_m = down_m(fc_m(m))   (fc: width -> width)
    item = Linear([e_t ; e_v ; e_m] -> d)                (text only: Linear(e_t -> d))

The earlier variant of this module stays available (``EARLIER_OPTIONS``): ``gate_temperature:
1.0``, ``gate_on: side`` (``g * s + (1 - g) * h``), ``embedding_block: false``, ``block_norm: true``
(``LayerNorm(x + up(act(down(x))))``), ``inter_mix: sum`` (a chain like the intra ones over
``h^t + h^v``), ``fusion: linear`` (``GELU(Linear([s^t ; s^v ; m] -> d))``, the item heads
frozen), ``activation: gelu``, ``dropout: 0.1``.

Because the backbone is frozen and its states never depend on trainable parameters, they can be
computed once: with ``cache.enabled`` (the default) the trainer reads them from the hidden-state
cache (``adapter4rec.cache``) and the backbone never runs during training or evaluation. Without the
cache the backbone runs every step, in eval mode (no dropout, so both paths see the same states)
and without gradient.

The side network sits in the item encoder's ``peft_side`` slot (``encoders.base.ItemEncoder``),
which routes item content through it. The user encoder trains in full (as in IISAN) unless ``towers`` leaves ``user`` out.
"""
from __future__ import annotations

import math
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
# The options that give the side network of adapter4rec before it followed the reference (same
# computation and parameter names): for configs and adapter files written then, which lack them.
EARLIER_OPTIONS = {"gate_temperature": 1.0, "gate_on": "side", "embedding_block": False,
                   "block_norm": True, "inter_mix": "sum", "fusion": "linear", "activation": "gelu",
                   "dropout": 0.1}


def _towers(value, key="towers"):
    value = opt.towers(value, key)
    if "item" not in value:
        raise ConfigError(f"peft.options.{key}: iisan's side network reads the item backbone; "
                          "towers must include item (add user to also train the user encoder)")
    return value


def _temperature(value, key="gate_temperature"):
    value = opt.number()(value, key)
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"peft.options.{key} must be a finite number > 0; got {value!r}")
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
    activation: str = opt.option("relu", opt.choice("relu", "gelu"),
                                 "relu (as the reference) or gelu")
    gate_init: float = opt.option(0.0, opt.number(-1e9),
                                  "initial gate logit (0: each block starts with an even mix)")
    init_std: float = opt.option(0.01, opt.number(), "std of the N(0, std) init of down and up")
    dropout: float = opt.option(0.0, opt.number(0.0, 1.0),
                                "dropout on the bottleneck activations (0: none, as the reference)")
    gate_temperature: float = opt.option(0.1, _temperature,
                                         "T of every gate sigmoid(logit / T) (0.1 as the reference; "
                                         "1.0: the earlier sigmoid(logit))")
    gate_on: str = opt.option("backbone", opt.choice("backbone", "side"),
                              "what an intra-modal gate g weights: backbone (g * h + (1 - g) * s, as "
                              "the reference) or side (g * s + (1 - g) * h, earlier)")
    embedding_block: bool = opt.option(True, opt.boolean,
                                       "a side block over the embedding output, the chains starting "
                                       "from 0 (as the reference); false: they start at h_0")
    block_norm: bool = opt.option(False, opt.boolean,
                                  "a LayerNorm after every side block's residual (false, as the "
                                  "reference; true: earlier)")
    inter_mix: str = opt.option("reference", opt.choice("reference", "sum"),
                                "inter-modal chain: reference (m + c * h_image + (1 - c) * h_text) "
                                "or sum (an intra-style chain over h_text + h_image, earlier)")
    fusion: str = opt.option("reference", opt.choice("reference", "linear"),
                             "item vector: reference (each modality through fc and its item head, "
                             "which trains, then Linear) or linear (GELU(Linear) of the concatenated "
                             "side outputs, heads frozen, earlier)")


def read_layers(n_layers: int, stride: int) -> list[int]:
    """0 (embeddings) and every ``stride``-th layer counted back from the last: the states read."""
    return [0] + sorted(range(n_layers, 0, -stride))


def n_blocks(layers: list[int], options: IISANOptions) -> int:
    """Side blocks of a chain over ``layers``: one per layer read, or one fewer when the chain starts
    at the embedding output (``embedding_block: false``)."""
    return len(layers) if options.embedding_block else len(layers) - 1


class SideBlock(nn.Module):
    """``x + up(act(down(x)))`` on pooled [n, hidden] states (the reference's ``AdapterBlock``);
    ``LayerNorm(x + up(act(down(x))))`` with ``block_norm``."""

    def __init__(self, hidden: int, size: int, activation: str, init_std: float, dropout: float,
                 norm: bool = False):
        super().__init__()
        self.adapter = Bottleneck.linear(hidden, size, activation, init_std, dropout=dropout)
        self.norm = nn.LayerNorm(hidden) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.adapter(x)
        return x if self.norm is None else self.norm(x)


class _Gated(nn.Module):
    """Gate logits and side blocks shared by both kinds of chain."""

    def __init__(self, hidden: int, blocks: int, options: IISANOptions):
        super().__init__()
        self.gates = nn.Parameter(torch.full((blocks,), float(options.gate_init)))
        self.blocks = nn.ModuleList(
            SideBlock(hidden, options.bottleneck, options.activation, options.init_std,
                      options.dropout, options.block_norm)
            for _ in range(blocks))
        self.temperature = float(options.gate_temperature)
        self.from_zero = bool(options.embedding_block)

    def gate_values(self) -> torch.Tensor:
        """``sigmoid(gate / T)``: the weight of each block's gate."""
        return torch.sigmoid(self.gates / self.temperature)

    def reads(self, states: torch.Tensor) -> torch.Tensor:
        """The states the blocks read, [n, blocks, hidden]: every layer, or all but the first."""
        return states if self.from_zero else states[:, 1:]


class SideChain(_Gated):
    """One intra-modal side network over [n, 1 + K, hidden]: ``s_(i+1) = Block_i(g_i * h_i +
    (1 - g_i) * s_i)`` (``gate_on: backbone``) or ``Block_i(g_i * s_i + (1 - g_i) * h_i)``
    (``side``), from ``s = 0`` (``embedding_block``) or ``s = h_0``."""

    def __init__(self, hidden: int, blocks: int, options: IISANOptions):
        super().__init__(hidden, blocks, options)
        self.on_backbone = options.gate_on == "backbone"

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        s = torch.zeros_like(states[:, 0]) if self.from_zero else states[:, 0]
        h, g = self.reads(states), self.gate_values()
        for i, block in enumerate(self.blocks):
            if self.on_backbone:
                s = block(g[i] * h[:, i] + (1 - g[i]) * s)
            else:
                s = block(g[i] * s + (1 - g[i]) * h[:, i])
        return s


class InterChain(_Gated):
    """The reference's inter-modal side network: ``m_(i+1) = Block_i(m_i + c_i * b_i + (1 - c_i) *
    a_i)`` from ``m = 0`` over two modalities' states ``a`` (text), ``b`` (image) [n, 1 + K, hidden]."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = self.reads(a), self.reads(b)
        c = self.gate_values()
        m = torch.zeros_like(a[:, 0])
        for i, block in enumerate(self.blocks):
            m = block(m + c[i] * b[:, i] + (1 - c[i]) * a[:, i])
        return m


class SideNetwork(nn.Module):
    """Intra-modal chains (one per modality), an inter-modal chain for two modalities, and their
    fusion into the item vector (``fusion``: through the item heads, or ``Linear + GELU``).

    ``layers[m]`` are the backbone layers modality ``m`` reads (0 = embeddings), ``widths[m]`` its
    hidden size; ``forward`` takes ``{m: [n, len(layers[m]), widths[m]]}`` and, with ``fusion:
    reference``, ``heads``: ``{m: the modality's item-head Linear}`` (``item_heads``).
    """

    def __init__(self, layers: dict[str, list[int]], widths: dict[str, int], d: int,
                 options: IISANOptions):
        super().__init__()
        self.modalities = list(layers)
        self.layers = {m: list(v) for m, v in layers.items()}
        self.fusion, self.inter_mix = options.fusion, options.inter_mix
        self.intra = nn.ModuleDict({m: SideChain(widths[m], n_blocks(layers[m], options), options)
                                    for m in self.modalities})
        self.inter = None
        common = None
        if options.inter and len(self.modalities) == 2:
            a, b = self.modalities
            if len(layers[a]) != len(layers[b]):
                raise ConfigError(f"iisan: the {a} backbone gives {n_blocks(layers[a], options)} side "
                                  f"blocks and the {b} backbone {n_blocks(layers[b], options)}; the "
                                  "inter-modal side network "
                                  "needs as many of each: choose peft.options.layer_stride so they "
                                  "match, or set peft.options.inter: false")
            common = widths[a]
            self.align = nn.ModuleDict({m: nn.Linear(widths[m], common) for m in self.modalities
                                        if widths[m] != common})
            chain = InterChain if options.inter_mix == "reference" else SideChain
            self.inter = chain(common, n_blocks(layers[a], options), options)
        if self.fusion == "reference":  # the reference's fc_bert / fc_cv, fc_mm / fc_mm_down, com_dense
            self.out = nn.ModuleDict({m: nn.Linear(widths[m], widths[m]) for m in self.modalities})
            parts = len(self.modalities)
            if self.inter is not None:
                self.inter_out = nn.Linear(common, common)
                self.inter_down = nn.Linear(common, d)
                parts += 1
            self.fuse = nn.Linear(parts * d, d)
        else:
            out = sum(widths.values()) + (common if self.inter is not None else 0)
            self.fuse = nn.Sequential(nn.Linear(out, d), nn.GELU())

    def _aligned(self, m: str, s: torch.Tensor) -> torch.Tensor:
        return self.align[m](s) if m in self.align else s

    def forward(self, states: dict[str, torch.Tensor],
                heads: dict[str, nn.Module] | None = None) -> torch.Tensor:
        dtype = next(self.parameters()).dtype
        states = {m: states[m].to(dtype) for m in self.modalities}  # cached states are fp16 / bf16
        parts = {m: self.intra[m](states[m]) for m in self.modalities}
        mixed = None
        if self.inter is not None:
            a, b = (self._aligned(m, states[m]) for m in self.modalities)
            mixed = self.inter(a, b) if self.inter_mix == "reference" else self.inter(a + b)
        if self.fusion != "reference":
            return self.fuse(torch.cat([*parts.values(), *([mixed] if mixed is not None else [])], -1))
        if heads is None or any(m not in heads for m in self.modalities):
            raise RuntimeError("iisan with fusion: reference needs the item heads of "
                               f"{', '.join(self.modalities)} (SideNetwork.encode passes them)")
        items = [heads[m](self.out[m](parts[m])) for m in self.modalities]
        if mixed is not None:
            items.append(self.inter_down(self.inter_out(mixed)))
        return self.fuse(torch.cat(items, -1))

    def encode(self, item_encoder: nn.Module, content: dict) -> torch.Tensor:
        """Item vectors from cached states (``hidden`` / ``hidden_<modality>`` in ``content``) or,
        without a cache, from a frozen-backbone pass over the items' tokens / pixels."""
        heads = item_heads(item_encoder) if self.fusion == "reference" else None
        if any(k.startswith("hidden") for k in content):
            return self(cached_states(content, self.modalities), heads)
        encoders = modal_encoders(item_encoder)
        return self({m: layer_states(encoders[m], content, self.layers[m]) for m in self.modalities},
                    heads)


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


def item_heads(item_encoder: nn.Module) -> dict[str, nn.Module]:
    """{modality: the Linear of its item head ``project``}: what ``fusion: reference`` projects each
    modality's side output through (as the reference's ``bert_pre_fc`` / ``cv_pre_fc``, without
    the GELU that follows it in the encoder's own forward)."""
    heads = {}
    for m, e in modal_encoders(item_encoder).items():
        project = getattr(e, "project", None)
        head = project[0] if isinstance(project, nn.Sequential) and len(project) else project
        if not isinstance(head, nn.Linear):
            raise ConfigError(f"iisan with peft.options.fusion: reference projects through the {m} "
                              "encoder's item head (project: Linear + GELU); this encoder has none: "
                              "set peft.options.fusion: linear")
        heads[m] = head
    return heads


@register("iisan", IISANOptions,
          "decoupled side networks over the frozen backbone's per-layer states (cacheable)")
def insert_iisan(model, towers, options) -> None:
    enc = model.item_encoder
    layers, widths = geometry(enc, options.layer_stride)
    reference = options.fusion == "reference"
    if reference:
        item_heads(enc)  # every modality has a head to fuse through
    for e in modal_encoders(enc).values():  # apply() froze the item tower; a multimodal item
        for p in e.backbone.parameters():  # encoder has its backbones outside the towers
            p.requires_grad_(False)
        project = getattr(e, "project", None)
        if project is not None:  # reference: the fusion goes through the head, which trains;
            project.requires_grad_(reference)  # linear: the fusion layer takes the head's place
    enc.peft_side = SideNetwork(layers, widths, model.user_encoder.d, options)
    if "user" in options.towers:
        model.user_encoder.requires_grad_(True)


def side_network(model) -> SideNetwork | None:
    return getattr(getattr(model, "item_encoder", None), "peft_side", None)


__all__ = ["IISANOptions", "EARLIER_OPTIONS", "SideNetwork", "SideChain", "InterChain", "SideBlock",
           "layer_states", "read_layers", "n_blocks", "item_heads", "modal_encoders", "modality_of",
           "side_network", "LAST"]

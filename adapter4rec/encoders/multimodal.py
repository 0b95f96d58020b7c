"""Text + image items (``model.item_encoder: text+image``), for decoupled side networks.

Each item has a title (``items.tsv``) and an image (``data.images``); the item encoder holds a
text backbone (``model.pretrained``) and an image backbone (``model.image_pretrained``). Only the
decoupled method ``iisan`` combines them (intra-modal side networks for each, an inter-modal one
over both, fused by a linear layer): the other PEFT methods insert into a single item backbone.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from .base import ItemEncoder


class MultiModalContent:
    """``get(ids)`` -> the text store's ``input_ids`` / ``attention_mask`` and the image store's
    ``pixels`` for the same items; ``stores`` names each modality's own store."""

    def __init__(self, text, image):
        if len(text) != len(image):
            raise ConfigError(f"text and image stores hold {len(text)} and {len(image)} items")
        self.stores = {"text": text, "image": image}

    def __len__(self) -> int:
        return len(self.stores["text"])

    def get(self, ids: np.ndarray) -> dict[str, torch.Tensor]:
        return {**self.stores["text"].get(ids), **self.stores["image"].get(ids)}


class MultiModalItemEncoder(ItemEncoder):
    """``encoders["text"]`` and ``encoders["image"]``; items are encoded by the side network that
    ``peft.apply(model, "iisan")`` puts in its ``peft_side`` slot."""

    def __init__(self, text: nn.Module, image: nn.Module):
        super().__init__()
        self.encoders = nn.ModuleDict({"text": text, "image": image})

    def forward(self, **content):
        raise ConfigError("text+image items are encoded by a decoupled side network: use "
                          "peft.method: iisan")


def build_multimodal_encoder(cfg, data, content=None):
    from . import build_item_encoder

    if cfg.peft.method != "iisan":
        raise ConfigError(f"model.item_encoder text+image needs peft.method iisan (the decoupled side "
                          f"network combines the two backbones); got {cfg.peft.method!r}")
    if not cfg.model.image_pretrained:
        raise ConfigError("model.item_encoder text+image needs model.image_pretrained (a ViT / ViT-MAE folder)")
    text_cfg, image_cfg = copy.deepcopy(cfg), copy.deepcopy(cfg)
    text_cfg.model.item_encoder = "text"
    image_cfg.model.item_encoder = "image"
    image_cfg.model.pretrained = cfg.model.image_pretrained
    stores = getattr(content, "stores", None) or {}
    text, text_content = build_item_encoder(text_cfg, data, stores.get("text"))
    image, image_content = build_item_encoder(image_cfg, data, stores.get("image"))
    if content is None or not isinstance(content, MultiModalContent):
        content = MultiModalContent(text_content, image_content)
    return MultiModalItemEncoder(text, image), content

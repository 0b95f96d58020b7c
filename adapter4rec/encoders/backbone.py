"""Loading pretrained backbones offline, and the part every content item encoder shares."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _check_folder(path: str) -> Path:
    p = Path(path)
    if not (p / "config.json").is_file():
        raise ConfigError(
            f"pretrained model folder {p} has no config.json: put a Hugging Face model folder there "
            "(see pretrained_models/README.md); nothing is ever downloaded")
    return p


def load_backbone(path: str, random_init: bool = False, expect_type: str | None = None) -> nn.Module:
    """A transformers model from a local folder; with ``random_init`` built from its config only.

    Never downloads. fp32 always (transformers 5 otherwise keeps the checkpoint's dtype) and SDPA
    attention. The pooler head is left out: we pool ourselves, and an unused pooler would hold
    parameters no gradient reaches (DDP complains about those).
    """
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    # the load report would list the pooler we leave out on purpose as "unexpected"
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    p = _check_folder(path)
    config = AutoConfig.from_pretrained(p, local_files_only=True)
    if expect_type and config.model_type not in expect_type.split("|"):
        raise ConfigError(f"{p}/config.json is a '{config.model_type}' model, expected {expect_type}")
    kwargs = {"add_pooling_layer": False} if config.model_type in ("bert", "roberta", "vit") else {}
    if config.model_type == "vit_mae":
        config.mask_ratio = 0.0  # items are encoded whole; the reference masked 75% at evaluation
    if random_init:
        return AutoModel.from_config(config, attn_implementation="sdpa", **kwargs).float()
    if not any((p / f).is_file() for f in WEIGHT_FILES):
        raise ConfigError(
            f"pretrained model folder {p} has a config but no weights (expected one of "
            f"{', '.join(WEIGHT_FILES)}); set model.random_init: true to train from random weights")
    return AutoModel.from_pretrained(p, config=config, dtype=torch.float32, local_files_only=True,
                                     attn_implementation="sdpa", **kwargs)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_check_folder(path), local_files_only=True)


def hidden_size(backbone: nn.Module) -> int:
    return backbone.config.hidden_size


class ContentEncoder(nn.Module):
    """Shared by text and image item encoders: a backbone, pooling, Linear(hidden -> d) + GELU."""

    def __init__(self, backbone: nn.Module, d: int, pooling: str = "cls"):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ConfigError(f"model.pooling must be 'cls' or 'mean', got {pooling!r}")
        self.backbone, self.pooling = backbone, pooling
        self.project = nn.Sequential(nn.Linear(hidden_size(backbone), d), nn.GELU())

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        if mask is None:
            return hidden.mean(1)
        m = mask[..., None].to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)

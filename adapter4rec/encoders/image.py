"""Image items: ViT or ViT-MAE backbone -> CLS (default) or mean pooling -> Linear(hidden -> d) + GELU.

Images arrive as uint8 [n, 3, S, S] (decoded and resized in DataLoader workers by
``adapter4rec.data.images.ImageContent``); they become float and are normalised here, on the
device, with the mean/std of the model's own ``preprocessor_config.json`` (0.5/0.5 for
vit-base-patch16-224, ImageNet mean/std for vit-mae-base).

ViT-MAE encodes items whole: ``load_backbone`` sets ``mask_ratio`` to 0 and this encoder passes a
fixed ``noise`` (0, 1, 2, ...), so the model's per-sample random shuffle of the patches is the
identity. Item vectors are then deterministic and the global RNG is left untouched (the reference
kept MAE's 75% random masking when encoding items, which made item vectors random).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from .backbone import ContentEncoder, load_backbone

log = logging.getLogger("adapter4rec")

# Used only when a model folder has no preprocessor_config.json.
DEFAULT_NORMALISATION = {"vit": ([0.5] * 3, [0.5] * 3),
                         "vit_mae": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])}


def read_preprocessor(path: str | Path, model_type: str) -> dict:
    """``{"mean", "std", "size", "resample"}`` from the folder's ``preprocessor_config.json``."""
    p = Path(path) / "preprocessor_config.json"
    cfg = {}
    if p.is_file():
        try:
            cfg = json.loads(p.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ConfigError(f"{p}: not valid JSON ({e})") from None
    else:
        log.warning("%s is missing: using the usual %s normalisation", p, model_type)
    mean, std = DEFAULT_NORMALISATION.get(model_type, DEFAULT_NORMALISATION["vit"])
    if cfg.get("do_normalize", True):
        mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
    else:
        mean, std = [0.0] * 3, [1.0] * 3
    size = cfg.get("size")
    if isinstance(size, dict):
        size = size.get("height", size.get("shortest_edge"))
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ConfigError(f"{p}: image_mean/image_std must be 3 values each (std > 0)")
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std], "size": size,
            "resample": int(cfg.get("resample", 2))}


class ImageItemEncoder(ContentEncoder):
    """uint8 pixels -> normalised on the device -> ViT / ViT-MAE -> pooling -> Linear + GELU.

    ``pooling="mean"`` averages the patch tokens (CLS left out; the visual prompt tokens of the
    ``prompt`` PEFT method are removed from ``last_hidden_state`` before pooling).
    """

    modality = "image"

    def __init__(self, backbone, d: int, pooling: str = "cls", mean=(0.5, 0.5, 0.5),
                 std=(0.5, 0.5, 0.5)):
        super().__init__(backbone, d, pooling)
        self.is_mae = backbone.config.model_type == "vit_mae"
        if self.is_mae:
            backbone.config.mask_ratio = 0.0  # every patch kept (load_backbone sets it too)
            _fix_position_embeddings(backbone)
        self.image_size = int(backbone.config.image_size)
        self.patch_size = int(backbone.config.patch_size)
        # Not persistent: they come from the preprocessor config, not from checkpoints.
        mean, std = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        self.register_buffer("scale", (1.0 / (255.0 * std)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", (mean / std).view(1, 3, 1, 1), persistent=False)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [n, 3, H, W] -> float32 (x / 255 - mean) / std."""
        return pixels.to(torch.float32) * self.scale - self.shift

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.normalise(pixels)
        h, w = x.shape[-2:]
        kwargs = {}
        if (h, w) != (self.image_size, self.image_size):
            kwargs["interpolate_pos_encoding"] = True  # data.image_size differs from the model's
        if self.is_mae:
            n = (h // self.patch_size) * (w // self.patch_size)
            kwargs["noise"] = torch.arange(n, device=x.device, dtype=torch.float32).expand(len(x), n)
        return self.head(self.backbone(pixel_values=x, **kwargs).last_hidden_state, None)

    def head(self, hidden: torch.Tensor, mask=None) -> torch.Tensor:
        return self.project(hidden[:, 1:].mean(1) if self.pooling == "mean" else hidden[:, 0])


def _fix_position_embeddings(backbone) -> None:
    """ViT-MAE's position embeddings are a fixed 2-D sin-cos table (``requires_grad=False`` in the
    model), but transformers 5's ``from_pretrained`` returns them as a trainable parameter, and a
    PEFT method that unfreezes the backbone would train them. Held as a buffer they stay fixed
    whatever the method; the values and the state-dict name are unchanged."""
    emb = backbone.embeddings
    pe = emb.position_embeddings
    if isinstance(pe, nn.Parameter):
        del emb.position_embeddings
        emb.register_buffer("position_embeddings", pe.detach().clone())


def build_image_encoder(cfg, data, content=None):
    """(ImageItemEncoder, ImageContent) for the items of ``data`` under ``cfg``."""
    from ..data.images import ImageContent

    m = cfg.model
    backbone = load_backbone(m.pretrained, m.random_init, expect_type="vit|vit_mae")
    pre = read_preprocessor(m.pretrained, backbone.config.model_type)
    encoder = ImageItemEncoder(backbone, m.embedding_dim, m.pooling, pre["mean"], pre["std"])
    size = cfg.data.image_size or encoder.image_size
    if size % encoder.patch_size:
        raise ConfigError(f"data.image_size {size} must be a multiple of the model's patch size "
                          f"{encoder.patch_size}")
    if content is None:
        content = ImageContent(resolve_store(cfg), data.item_ids, size, cfg.data.missing_image,
                               pre["resample"])
    return encoder, content


def resolve_store(cfg) -> Path:
    """``data.images`` relative to ``data.path`` (or as given, if that exists and the other not)."""
    from ..errors import DataError

    if not cfg.data.images:
        raise ConfigError("model.item_encoder: image needs data.images, the LMDB image store "
                          "(built with `adapter4rec build-lmdb`)")
    given = Path(cfg.data.images)
    under = Path(cfg.data.path) / given
    if under.exists():
        return under
    if given.exists():
        return given
    raise DataError(f"image store not found (looked for {under} and {given}); build it with "
                    "`adapter4rec build-lmdb --images DIR --items items.tsv --out X.lmdb`",
                    cfg.data.images)

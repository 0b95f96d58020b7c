"""Item encoders (text, image, id) and user encoders (SASRec; CPC is SASRec with another objective;
GPSD's pre-norm block, ``model.block: gpsd``)."""
from __future__ import annotations

from ..errors import ConfigError
from .backbone import load_backbone, load_tokenizer
from .gpsd import GPSD
from .id import IdContent, IdItemEncoder, load_item_features
from .sasrec import SASRec
from .text import TextContent, TextItemEncoder


def build_item_encoder(cfg, data, content=None):
    """(item encoder, content store) for the items of ``data`` under ``cfg.model``.

    ``content`` may be passed in to reuse an already tokenised/opened store.
    """
    m = cfg.model
    if m.item_encoder == "id":
        n_features, features = 0, None
        if cfg.data.item_features:
            vocab, features = load_item_features(cfg.data.path, cfg.data.item_features,
                                                 list(data.item_ids))
            n_features = len(vocab)
        std = 0.02 if m.block == "gpsd" else None  # gpsd-rec's N(0, 0.02); the reference's Xavier
        return (IdItemEncoder(data.n_items, m.embedding_dim, n_features, std),
                content or IdContent(data.n_items, features))
    if m.item_encoder == "text":
        backbone = load_backbone(m.pretrained, m.random_init, expect_type="bert|roberta")
        # RoBERTa numbers positions from padding_idx + 1: that many fewer positions are usable
        offset = backbone.config.pad_token_id + 1 if backbone.config.model_type == "roberta" else 0
        limit = backbone.config.max_position_embeddings - offset
        if cfg.data.max_title_len > limit:
            raise ConfigError(f"config key 'data.max_title_len' is {cfg.data.max_title_len}, but "
                              f"{m.pretrained} has {limit} positions: titles that long cannot be encoded")
        if content is None:
            content = TextContent.from_titles(data.texts, m.pretrained, cfg.data.max_title_len,
                                              cfg.data.max_unk_fraction)
        return TextItemEncoder(backbone, m.embedding_dim, m.pooling), content
    if m.item_encoder == "image":
        from .image import build_image_encoder  # the image path (LMDB, ViT/MAE)

        return build_image_encoder(cfg, data, content)
    raise ConfigError(f"unknown model.item_encoder {m.item_encoder!r}")


__all__ = ["build_item_encoder", "build_user_encoder", "load_backbone", "load_tokenizer", "SASRec", "GPSD", "TextContent",
           "TextItemEncoder", "IdContent", "IdItemEncoder"]


def build_user_encoder(cfg):
    """The user encoder of ``cfg.model``: GPSD's block (``model.block: gpsd``) or SASRec's."""
    m = cfg.model
    if m.block == "gpsd":
        return GPSD(m.embedding_dim, m.num_blocks, m.num_heads, m.dropout, cfg.data.max_seq_len)
    return SASRec(m.embedding_dim, cfg.data.max_seq_len, m.num_blocks, m.num_heads, m.dropout,
                  m.block)

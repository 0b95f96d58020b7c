"""The recommender every run trains: an item encoder, a user encoder, and an objective.

One interface for SASRec, CPC, ID and content models (as RecBole's calculate_loss / predict):
``forward(batch)`` returns the training loss, ``encode_items(content)`` item vectors and
``user_vectors(item_vecs, mask)`` the last position of the user encoder. The model knows nothing
of PEFT methods or caches: the item encoder routes its own content (``encoders.base``).
"""
from __future__ import annotations

import torch
from torch import nn

from .config import Config
from .encoders import build_item_encoder
from .encoders.sasrec import SASRec
from .objectives import OBJECTIVES
from .runtime import distributed as dist


class Recommender(nn.Module):
    def __init__(self, item_encoder: nn.Module, user_encoder: nn.Module, objective: str = "bce",
                 with_inbatch: bool = False, content=None, item_ids: list[str] | None = None):
        super().__init__()
        self.item_encoder, self.user_encoder = item_encoder, user_encoder
        self.objective, self.with_inbatch = objective, with_inbatch
        # what the model encodes its items from (tokens, pixels, ids or cached states; set by
        # build_model and replaced by the hidden-state cache), and the items' own ids (1..N)
        self.content, self.item_ids = content, item_ids

    def encode_items(self, content: dict[str, torch.Tensor]) -> torch.Tensor:
        """Item vectors [n, d] for ``content`` (a content store's ``get``)."""
        return self.item_encoder.encode(content)

    def forward(self, batch: dict) -> torch.Tensor:
        enc = self.encode_items(batch["content"]).float()        # [U, d], each item once
        # under DDP each rank encoded a contiguous shard of the batch's items: gather all U rows
        enc = dist.gather_rows(enc, len(batch["ids"]), grad=True)
        items = torch.cat([enc.new_zeros(1, enc.shape[1]), enc])  # row 0: padding
        inp = batch["inp"]
        h = self.user_encoder(items[inp], inp > 0)
        return OBJECTIVES[self.objective](h.float(), items, with_inbatch=self.with_inbatch, **batch)

    def user_vectors(self, item_vecs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.user_encoder(item_vecs, mask)[:, -1]


def build_model(cfg: Config, data, content=None) -> Recommender:
    """The model for ``data`` (a RecData) under ``cfg``; it holds its items' content store
    (``model.content``) and ids (``model.item_ids``)."""
    if cfg.model.item_encoder == "text+image":  # two backbones: only iisan combines them
        from .encoders.multimodal import build_multimodal_encoder
        item_encoder, content = build_multimodal_encoder(cfg, data, content)
    else:
        item_encoder, content = build_item_encoder(cfg, data, content)
    m = cfg.model
    user = SASRec(m.embedding_dim, cfg.data.max_seq_len, m.num_blocks, m.num_heads, m.dropout,
                  m.block)
    return Recommender(item_encoder, user, cfg.train.objective, cfg.train.with_inbatch, content,
                       list(data.item_ids))

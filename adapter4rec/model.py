"""The recommender every run trains: an item encoder, a user encoder, and an objective.

One interface for SASRec, CPC, ID and content models (as RecBole's calculate_loss / predict):
``forward(batch)`` returns the training loss, ``encode_items(content)`` item vectors and
``user_vectors(item_vecs, mask)`` the last position of the user encoder. The model knows nothing
of PEFT methods or caches: the item encoder routes its own content (``encoders.base``).
GPSD's discriminative model (``train.objective: discriminative``) appends candidates to the history
and scores them with a head (``candidate_scores``), for the AUC evaluation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import Config
from .encoders import build_item_encoder, build_user_encoder
from .encoders.gpsd import RankHead
from .objectives import OBJECTIVES
from .runtime import distributed as dist


class Recommender(nn.Module):
    """``head`` (a ``RankHead``): the discriminative model's candidate scorer (GPSD), else None.
    ``item_output``: a separate output ID table (``model.tie_embeddings: false``); None: targets
    are scored with the item encoder's own vectors (tied). ``temperature`` > 0: targets and users
    are compared by cosine (``train.temperature``)."""

    def __init__(self, item_encoder: nn.Module, user_encoder: nn.Module, objective: str = "bce",
                 with_inbatch: bool = False, content=None, item_ids: list[str] | None = None,
                 temperature: float = 0.0, head: nn.Module | None = None,
                 item_output: nn.Module | None = None):
        super().__init__()
        self.item_encoder, self.user_encoder = item_encoder, user_encoder
        self.objective, self.with_inbatch, self.temperature = objective, with_inbatch, temperature
        self.head, self.item_output = head, item_output
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
        if self.objective == "discriminative":  # the candidates appended to the history
            logits = self.candidate_logits(items[inp], inp > 0, items[batch["cand"]])
            return OBJECTIVES["discriminative"](logits.float(), batch["label"])
        h = self.user_encoder(items[inp], inp > 0)
        targets = items
        if self.item_output is not None:  # untied: the output table's rows of the batch's items
            out = self.item_output(batch["ids"])
            targets = torch.cat([out.new_zeros(1, out.shape[1]), out])
        return OBJECTIVES[self.objective](h.float(), targets.float(), with_inbatch=self.with_inbatch,
                                          temperature=self.temperature, **batch)

    @property
    def yields_user_vectors(self) -> bool:
        """Whether the model ranks by user vectors (full-ranking HR/NDCG); the discriminative model
        scores candidates with its head only."""
        return self.head is None

    def user_vectors(self, item_vecs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.user_encoder(item_vecs, mask)[:, -1]

    def target_matrix(self, items: torch.Tensor) -> torch.Tensor:
        """The [N + 1, d] vectors user vectors are scored against, from ``items`` (all items
        encoded, row 0 padding): the items themselves (tied) or the output table, L2-normalised
        when the model scores by cosine."""
        out = items if self.item_output is None else self.item_output.weight.float()
        return F.normalize(out, dim=-1, eps=1e-6) if self.temperature > 0 else out

    def candidate_logits(self, hist_vecs: torch.Tensor, mask: torch.Tensor,
                         cand_vecs: torch.Tensor) -> torch.Tensor:
        """Discriminative model: logits [B, C] of the candidates [B, C, d] after each history."""
        n = hist_vecs.shape[1]
        return self.head(self.user_encoder(hist_vecs, mask, candidates=cand_vecs)[:, n:])

    def candidate_scores(self, items: torch.Tensor, hist: torch.Tensor,
                         cand: torch.Tensor) -> torch.Tensor:
        """Scores [B, C] of candidate item ids ``cand`` after histories ``hist`` (ids [B, L], left
        padded), from ``items`` (all items encoded, row 0 padding): the head's logits, or the user
        vector's dot product with the target vectors."""
        if self.head is not None:
            return self.candidate_logits(items[hist], hist > 0, items[cand])
        u = self.user_vectors(items[hist], hist > 0).float()
        return (u[:, None] * self.target_matrix(items)[cand]).sum(-1)


def build_model(cfg: Config, data, content=None) -> Recommender:
    """The model for ``data`` (a RecData) under ``cfg``; it holds its items' content store
    (``model.content``) and ids (``model.item_ids``)."""
    if cfg.model.item_encoder == "text+image":  # two backbones: only iisan combines them
        from .encoders.multimodal import build_multimodal_encoder
        item_encoder, content = build_multimodal_encoder(cfg, data, content)
    else:
        item_encoder, content = build_item_encoder(cfg, data, content)
    m = cfg.model
    head = RankHead(m.embedding_dim) if cfg.train.objective == "discriminative" else None
    output = None
    if not m.tie_embeddings:  # a separate output ID table (validate: id items only)
        output = nn.Embedding(data.n_items + 1, m.embedding_dim, padding_idx=0)
        nn.init.normal_(output.weight.data[1:], std=0.02)
    return Recommender(item_encoder, build_user_encoder(cfg), cfg.train.objective,
                       cfg.train.with_inbatch, content, list(data.item_ids), cfg.train.temperature,
                       head, output)

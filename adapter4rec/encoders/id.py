"""The IDRec item encoder: one learned vector per item, plus optional side features.

Side features (``data.item_features``, e.g. a category or a brand: GPSD's ``cate_embeddings``) are
read from their own file, ``item_id<TAB>feature feature ...``; each distinct feature token has a
vector in ``features`` and an item's vector is its ID vector plus the sum of its features'
vectors (an item without features has only its ID vector).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.readers import read_item_features
from ..errors import ConfigError
from .base import ItemEncoder

log = logging.getLogger("adapter4rec")


class IdContent:
    """ids (and, with side features, each item's feature indices [n, F], 0 = none)."""

    def __init__(self, n_items: int, features: np.ndarray | None = None):
        self.n = n_items
        self.features = features  # [n_items + 1, F] int64, row 0 (padding) all 0

    def __len__(self):
        return self.n

    def get(self, ids: np.ndarray) -> dict[str, torch.Tensor]:
        ids = np.asarray(ids, dtype=np.int64)
        out = {"ids": torch.from_numpy(ids)}
        if self.features is not None:
            out["features"] = torch.from_numpy(self.features[ids])
        return out


def load_item_features(folder: str, name: str, item_ids: list[str]) -> tuple[list[str], np.ndarray]:
    """(feature vocabulary, [N + 1, F] indices into it, 1-based, 0 = none) for the items of a run
    (``item_ids[i - 1]`` is item i) from the ``data.item_features`` file ``name`` in ``folder``
    (or at ``name``, if absolute). Items of the file that the run does not have are ignored."""
    path = Path(folder) / name
    if not path.is_file():
        raise ConfigError(f"config key 'data.item_features': {path} is not a file")
    table = read_item_features(path)
    vocab: dict[str, int] = {}
    rows = [table.get(i, []) for i in item_ids]
    width = max((len(r) for r in rows), default=0)
    out = np.zeros((len(item_ids) + 1, max(width, 1)), dtype=np.int64)
    for n, feats in enumerate(rows, 1):
        for j, f in enumerate(feats):
            out[n, j] = vocab.setdefault(f, len(vocab) + 1)
    missing = sum(not r for r in rows)
    if missing == len(rows):
        raise ConfigError(f"config key 'data.item_features': {path} names none of the run's "
                          f"{len(rows)} items")
    log.info("item features %s: %d distinct features, %d of %d items without any", path,
             len(vocab), missing, len(rows))
    return list(vocab), out


class IdItemEncoder(ItemEncoder):
    def __init__(self, n_items: int, d: int, n_features: int = 0, init_std: float | None = None):
        """``init_std``: rows drawn from N(0, init_std) (GPSD: 0.02); None: Xavier-normal (the
        reference's IDRec). The padding row 0 stays zero."""
        super().__init__()
        self.table = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.features = nn.Embedding(n_features + 1, d, padding_idx=0) if n_features else None
        for t in (self.table, self.features):
            if t is not None:
                if init_std is None:
                    nn.init.xavier_normal_(t.weight.data[1:])
                else:
                    nn.init.normal_(t.weight.data[1:], std=init_std)

    def forward(self, ids: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        out = self.table(ids)
        if self.features is not None and features is not None:
            out = out + self.features(features).sum(-2)  # row 0 is zero: padding adds nothing
        return out

"""The IDRec baseline: one learned vector per item."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .base import ItemEncoder


class IdContent:
    def __init__(self, n_items: int):
        self.n = n_items

    def __len__(self):
        return self.n

    def get(self, ids: np.ndarray) -> dict[str, torch.Tensor]:
        return {"ids": torch.from_numpy(np.asarray(ids, dtype=np.int64))}


class IdItemEncoder(ItemEncoder):
    def __init__(self, n_items: int, d: int):
        super().__init__()
        self.table = nn.Embedding(n_items + 1, d, padding_idx=0)
        nn.init.xavier_normal_(self.table.weight.data[1:])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids)

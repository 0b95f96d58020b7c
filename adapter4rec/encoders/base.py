"""What every item encoder is: ``encode(content)`` -> item vectors [n, d].

``content`` is what the run's content store's ``get(ids)`` returns (tokens, pixels, ids, or the
cached hidden states of a frozen backbone). The encoder routes it itself, so the recommender never
needs to know which PEFT method or cache is in use:
- ``peft_side``: a slot for a decoupled PEFT method's side network (``iisan`` puts it there); when
  set, it encodes the items (from cached states or from a frozen-backbone pass);
- otherwise the encoder's own ``forward(**content)``.
"""
from __future__ import annotations

import torch
from torch import nn


class ItemEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.peft_side = None  # a Module assigned here is registered as the submodule `peft_side`

    def encode(self, content: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.peft_side is not None:
            return self.peft_side.encode(self, content)
        return self(**content)

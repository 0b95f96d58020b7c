"""Text items: titles tokenised once into an int32 matrix, encoded by any BERT-family model."""
from __future__ import annotations

import numpy as np
import torch

from .backbone import ContentEncoder, load_tokenizer


class TextContent:
    """Every item's title, tokenised once per run: an int32 matrix [n_items + 1, max_title_len].

    Row 0 is padding and is never encoded. ``get`` trims the batch to its longest title so that
    token padding does not go through the backbone either.
    """

    def __init__(self, tokens: np.ndarray, pad_id: int):
        self.tokens, self.pad_id = tokens, pad_id

    @classmethod
    def from_titles(cls, titles: list[str], model_dir: str, max_len: int = 30) -> "TextContent":
        tok = load_tokenizer(model_dir)
        enc = tok(titles, max_length=max_len, truncation=True, padding="max_length")["input_ids"]
        tokens = np.full((len(titles) + 1, max_len), tok.pad_token_id, dtype=np.int32)
        tokens[1:] = np.asarray(enc, dtype=np.int32)
        return cls(tokens, tok.pad_token_id)

    def __len__(self):
        return len(self.tokens) - 1

    def get(self, ids: np.ndarray) -> dict[str, torch.Tensor]:
        rows = torch.from_numpy(self.tokens[ids].astype(np.int64))
        mask = rows != self.pad_id
        width = max(int(mask.sum(1).max()), 1) if len(rows) else 1
        return {"input_ids": rows[:, :width], "attention_mask": mask[:, :width].long()}


class TextItemEncoder(ContentEncoder):
    """backbone -> CLS (default) or masked-mean pooling -> Linear(hidden -> d) + GELU."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.project(self.pool(hidden, attention_mask))

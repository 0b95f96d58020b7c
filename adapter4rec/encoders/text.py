"""Text items: titles tokenised once into an int32 matrix, encoded by any BERT-family model."""
from __future__ import annotations

import logging

import numpy as np
import torch

from ..errors import ConfigError
from .backbone import ContentEncoder, load_tokenizer

log = logging.getLogger("adapter4rec")


class TextContent:
    """Every item's title, tokenised once per run: an int32 matrix [n_items + 1, max_title_len].

    Row 0 is padding and is never encoded. ``get`` trims the batch to its longest title so that
    token padding does not go through the backbone either.
    """

    def __init__(self, tokens: np.ndarray, pad_id: int):
        self.tokens, self.pad_id = tokens, pad_id

    @classmethod
    def from_titles(cls, titles: list[str], model_dir: str, max_len: int = 30,
                    max_unk_fraction: float = 0.5) -> "TextContent":
        """Tokenise ``titles``; refuse them when more than ``max_unk_fraction`` of them are mostly
        the unknown token (see ``check_unknown``)."""
        tok = load_tokenizer(model_dir)
        enc = tok(titles, max_length=max_len, truncation=True, padding="max_length")["input_ids"]
        tokens = np.full((len(titles) + 1, max_len), tok.pad_token_id, dtype=np.int32)
        tokens[1:] = np.asarray(enc, dtype=np.int32)
        check_unknown(tokens[1:], tok, model_dir, max_unk_fraction)
        return cls(tokens, tok.pad_token_id)

    def __len__(self):
        return len(self.tokens) - 1

    def get(self, ids: np.ndarray) -> dict[str, torch.Tensor]:
        rows = torch.from_numpy(self.tokens[ids].astype(np.int64))
        mask = rows != self.pad_id
        width = max(int(mask.sum(1).max()), 1) if len(rows) else 1
        return {"input_ids": rows[:, :width], "attention_mask": mask[:, :width].long()}


def check_unknown(tokens: np.ndarray, tok, model_dir: str, max_unk_fraction: float) -> None:
    """Count the titles of which half or more of the tokens the model sees (special tokens and
    padding aside) are the unknown token; log the count, and raise ``ConfigError`` when they are
    more than ``max_unk_fraction`` of all titles. A tokenizer of another model or language turns
    titles into [UNK] silently, and the run then trains on nothing and reports HR@10 0.000."""
    if tok.unk_token_id is None or not len(tokens):  # byte-level tokenizers have no unknown token
        return
    special = np.isin(tokens, [i for i in tok.all_special_ids if i != tok.unk_token_id])
    n_tokens = (~special).sum(1)
    n_unk = (tokens == tok.unk_token_id).sum(1)
    mostly = int(((n_tokens > 0) & (2 * n_unk >= n_tokens)).sum())
    fraction = mostly / len(tokens)
    log.log(logging.WARNING if mostly else logging.INFO,
            "%d of %d item titles (%.1f%%) are mostly %s with the tokenizer of %s", mostly,
            len(tokens), 100 * fraction, tok.unk_token, model_dir)
    if fraction > max_unk_fraction:
        raise ConfigError(
            f"{mostly} of {len(tokens)} item titles ({fraction:.1%}) are mostly {tok.unk_token} "
            f"with the tokenizer of {model_dir}, more than data.max_unk_fraction = {max_unk_fraction}: "
            "the tokenizer likely does not match the model or the titles' language; check "
            "model.pretrained, or raise data.max_unk_fraction to train anyway")


class TextItemEncoder(ContentEncoder):
    """backbone -> CLS (default) or masked-mean pooling -> Linear(hidden -> d) + GELU."""

    modality = "text"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(hidden, attention_mask)

"""SASRec user encoder: the reference's post-LN transformer, in one file.

Follows westlake-repl/Adapter4Rec (commit 721cba5) ``Pretraining/Text/model/modules.py``
``TransformerEncoder`` / ``TransformerBlock`` / ``MultiHeadedAttention`` /
``PositionwiseFeedForward`` and ``model/encoders.py`` ``User_Encoder`` (the Downstream copies are
the same network): d=64, 2 blocks, 2 heads, bias-free q/k/v/out projections, ReLU FFN of 4d (with
biases), learned positions, LayerNorm eps 1e-6 after each residual sum and on the input, dropout
0.1 on the input, on the attention probabilities and on each residual branch (none inside the FFN),
causal + padding mask of -1e9, Xavier-normal init (biases 0, LayerNorms 1/0); the last position
is the user vector. CPC uses the same network (only the objective differs).

``block="sasrec_bias"`` is adapter4rec 0.1's block, kept so its checkpoints still load: biases in
the q/k/v/out projections and a second dropout on the FFN's hidden ReLU.

Where it knowingly differs from the reference (same function, other code):
- attention is ``F.scaled_dot_product_attention`` (same 1/sqrt(d_head) scale and probability
  dropout, not a separate softmax + ``nn.Dropout``; dropout masks are drawn differently);
- the LayerNorms belong to the block (``ln_attn``, ``ln_ffn``), not to the sublayer modules, and the
  names differ (``query/key/value/out`` for ``w_Q/w_K/w_V/fc``, ``fc1/fc2`` for ``w_1/w_2``), so a
  reference checkpoint does not load by name;
- a sequence shorter than ``max_len`` takes the last rows of the position table (the positions of
  its left-padded place); the reference always runs ``max_len`` positions.

Insertion sites for PEFT (see ``adapter4rec.encoders.sites``): ``blocks[i].attn.out`` (attention
output projection), ``blocks[i].ffn.fc2`` (FFN output projection), ``blocks[i].attn.query`` /
``key`` / ``value`` (LoRA), ``blocks[i].ln_attn`` / ``ln_ffn`` (LayerNorms) and the residual-branch
dropouts ``blocks[i].attn_drop`` / ``ffn_drop`` (the reference puts serial adapters after them).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

# A finite "minus infinity": left padding + causal mask leaves padded query rows with no visible
# key, and -inf there gives NaN that spreads through later layers (the reference uses -1e9 too).
NEG = -1e9

# config model.block -> (biases in the attention projections, dropout on the FFN's hidden ReLU)
BLOCKS = {"sasrec": (False, False),      # the reference's network
          "sasrec_bias": (True, True)}   # adapter4rec 0.1's block (its checkpoints need it)


class Attention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float, bias: bool):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.query, self.key, self.value = (nn.Linear(d, d, bias=bias) for _ in range(3))
        self.out = nn.Linear(d, d, bias=bias)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (p(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)
                   for p in (self.query, self.key, self.value))
        # dropout_p: the reference's dropout on the attention probabilities
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class FeedForward(nn.Module):
    def __init__(self, d: int, inner: int, hidden_dropout: float | None = None):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, inner), nn.Linear(inner, d)
        # sasrec_bias only: the reference has no dropout here (its one is on the residual branch)
        self.drop = None if hidden_dropout is None else nn.Dropout(hidden_dropout)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        return self.fc2(h if self.drop is None else self.drop(h))


class Block(nn.Module):
    """Post-LN block as the reference: x = LN(x + drop(attn(x))); x = LN(x + drop(ffn(x)))."""

    def __init__(self, d: int, heads: int, dropout: float, bias: bool = False,
                 ffn_dropout: bool = False):
        super().__init__()
        self.attn = Attention(d, heads, dropout, bias)
        self.ffn = FeedForward(d, 4 * d, dropout if ffn_dropout else None)
        self.ln_attn = nn.LayerNorm(d, eps=1e-6)
        self.ln_ffn = nn.LayerNorm(d, eps=1e-6)
        # one module per residual branch: a hook (a serial adapter) on one fires once per block
        self.attn_drop = nn.Dropout(dropout)
        self.ffn_drop = nn.Dropout(dropout)

    def forward(self, x, bias):
        x = self.ln_attn(x + self.attn_drop(self.attn(x, bias)))
        return self.ln_ffn(x + self.ffn_drop(self.ffn(x)))


class SASRec(nn.Module):
    def __init__(self, d: int = 64, max_len: int = 10, blocks: int = 2, heads: int = 2,
                 dropout: float = 0.1, block: str = "sasrec"):
        super().__init__()
        if block not in BLOCKS:
            raise ConfigError(f"model.block must be one of {', '.join(BLOCKS)}; got {block!r}")
        self.d, self.block = d, block
        self.max_len = max_len
        self.pos = nn.Embedding(max_len, d)
        self.ln_in = nn.LayerNorm(d, eps=1e-6)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d, heads, dropout, *BLOCKS[block]) for _ in range(blocks))
        for name, p in self.named_parameters():  # Xavier as the reference; LayerNorms stay 1/0
            if p.dim() > 1:
                nn.init.xavier_normal_(p)
            elif "ln" not in name:
                nn.init.zeros_(p)

    def forward(self, item_embs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """item_embs [B, L, d] (left padded), mask [B, L] bool (True = real item) -> [B, L, d]."""
        n = item_embs.shape[1]
        x = self.drop(self.ln_in(item_embs + self.pos.weight[-n:]))
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        visible = causal & mask[:, None, None, :]  # [B, 1, L, L]
        bias = torch.zeros(visible.shape, dtype=x.dtype, device=x.device).masked_fill(~visible, NEG)
        for block in self.blocks:
            x = block(x, bias)
        return x

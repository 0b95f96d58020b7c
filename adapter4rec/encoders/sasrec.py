"""SASRec user encoder: the reference's post-LN transformer, in one file.

d=64, 2 blocks, 2 heads, ReLU FFN of 4d, learned positions, LayerNorm eps 1e-6, dropout 0.1,
causal + padding mask, Xavier init; the last position is the user vector. CPC uses the same
network (only the objective differs).

Insertion sites for PEFT (see ``adapter4rec.encoders.sites``): ``blocks[i].attn.out`` (attention
output projection), ``blocks[i].ffn.fc2`` (FFN output projection), ``blocks[i].attn.query`` /
``value`` (for LoRA), and ``blocks[i].ln_attn`` / ``ln_ffn`` (LayerNorms).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# A finite "minus infinity": left padding + causal mask leaves padded query rows with no visible
# key, and -inf there gives NaN that spreads through later layers (the reference uses -1e9 too).
NEG = -1e9


class Attention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (p(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)
                   for p in (self.query, self.key, self.value))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class FeedForward(nn.Module):
    def __init__(self, d: int, inner: int, dropout: float):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, inner), nn.Linear(inner, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.fc2(self.drop(F.relu(self.fc1(x))))


class Block(nn.Module):
    """Post-LN block as the reference: x = LN(x + drop(attn(x))); x = LN(x + drop(ffn(x)))."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.attn = Attention(d, heads, dropout)
        self.ffn = FeedForward(d, 4 * d, dropout)
        self.ln_attn = nn.LayerNorm(d, eps=1e-6)
        self.ln_ffn = nn.LayerNorm(d, eps=1e-6)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, bias):
        x = self.ln_attn(x + self.drop(self.attn(x, bias)))
        return self.ln_ffn(x + self.drop(self.ffn(x)))


class SASRec(nn.Module):
    def __init__(self, d: int = 64, max_len: int = 10, blocks: int = 2, heads: int = 2,
                 dropout: float = 0.1):
        super().__init__()
        self.d = d
        self.pos = nn.Embedding(max_len, d)
        self.ln_in = nn.LayerNorm(d, eps=1e-6)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d, heads, dropout) for _ in range(blocks))
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

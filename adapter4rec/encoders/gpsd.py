"""GPSD user encoder: the modern decoder block of gpsd-rec, in one file (``model.block: gpsd``).

Follows chqiwang/gpsd-rec ``src/model/transformer.py`` (``Transformer``, ``TransformerBlock``,
``Attention``, ``FeedForward``, ``RMSNorm``, ``precompute_freqs_cis``): pre-norm blocks
``h = x + drop(attn(RMSNorm(x)))``, ``out = h + drop(ffn(RMSNorm(h)))``; RMSNorm eps 1e-5 (its
``ModelArgs.norm_eps``) and a final RMSNorm after the last block; bias-free q/k/v/out projections;
rotary position embeddings on q and k (LLaMA's interleaved pairs, theta 10000, per head); a SwiGLU
FFN ``fc2(silu(fc1(x)) * fc3(x))`` of hidden size ``int(2 * 4d / 3)`` rounded up to a multiple of
32 (192 for d = 64); a segment embedding (2 rows) added to the inputs, 1 on the candidate of the
discriminative model; causal attention; every Linear and Embedding initialised N(0, 0.02); no
dropout by default (gpsd-rec's 0.0).

Where it knowingly differs (same function, other code):
- sequences are left padded (the library's layout) where gpsd-rec pads on the right: RoPE is
  relative, and padded keys are masked with a finite -1e9 (each position also sees itself, so a
  padded row has a key and never gives NaN), so the states of the real items do not depend on
  how much padding precedes them;
- the discriminative model scores several candidates of one history in one pass
  (``forward(..., candidates=)``): every candidate sits at the position after the history, sees
  the history and itself, and no other candidate; the history never sees a candidate. That is
  exactly gpsd-rec's one pass per (history, candidate) sample, since attention is causal;
- names follow ``encoders/sasrec.py`` (``attn.query/key/value/out``, ``ffn.fc1/fc3/fc2`` for
  ``w1/w3/w2``, ``ln_attn/ln_ffn/ln_out`` for the RMSNorms), so a gpsd-rec checkpoint does not load
  by name.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .sasrec import NEG

NORM_EPS = 1e-5     # gpsd-rec ModelArgs.norm_eps (its RMSNorm class default, 1e-6, is not used)
ROPE_THETA = 10000.0
MULTIPLE_OF = 32    # gpsd-rec ModelArgs.multiple_of


def swiglu_hidden(d: int, multiple_of: int = MULTIPLE_OF) -> int:
    """gpsd-rec's (LLaMA's) SwiGLU width: 2/3 of 4d, rounded up to a multiple of ``multiple_of``."""
    h = int(2 * (4 * d) / 3)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight).type_as(x)


def rope(positions: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [n, head_dim / 2] of positions [n] (gpsd-rec ``precompute_freqs_cis``)."""
    freqs = 1.0 / (ROPE_THETA ** (torch.arange(0, head_dim, 2, device=positions.device)[: head_dim // 2]
                                  .float() / head_dim))
    angles = positions.float()[:, None] * freqs[None]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the interleaved pairs (x0, x1), (x2, x3), ... of x [B, H, n, hd] (as the complex
    product of gpsd-rec's ``apply_rotary_emb``), in fp32."""
    xf = x.float()
    a, b = xf[..., 0::2], xf[..., 1::2]
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
    return out.type_as(x)


class Attention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.query, self.key, self.value = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.out = nn.Linear(d, d, bias=False)

    def forward(self, x, bias, cos, sin):
        b, n, d = x.shape
        q, k, v = (p(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)
                   for p in (self.query, self.key, self.value))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype),
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class SwiGLU(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(d, hidden, bias=False)  # gate (gpsd-rec w1)
        self.fc3 = nn.Linear(d, hidden, bias=False)  # up (w3)
        self.fc2 = nn.Linear(hidden, d, bias=False)  # down (w2)

    def forward(self, x):
        return self.fc2(F.silu(self.fc1(x)) * self.fc3(x))


class Block(nn.Module):
    """Pre-norm: h = x + drop(attn(norm(x))); out = h + drop(ffn(norm(h)))."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.attn = Attention(d, heads, dropout)
        self.ffn = SwiGLU(d, swiglu_hidden(d))
        self.ln_attn, self.ln_ffn = RMSNorm(d), RMSNorm(d)
        self.attn_drop, self.ffn_drop = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x, bias, cos, sin):
        h = x + self.attn_drop(self.attn(self.ln_attn(x), bias, cos, sin))
        return h + self.ffn_drop(self.ffn(self.ln_ffn(h)))


class GPSD(nn.Module):
    def __init__(self, d: int = 64, blocks: int = 4, heads: int = 4, dropout: float = 0.0,
                 max_len: int = 20):
        super().__init__()
        # max_len: the history length it is fed (data.max_seq_len; RoPE itself has no limit)
        self.d, self.heads, self.block, self.max_len = d, heads, "gpsd", max_len
        self.segment = nn.Embedding(2, d)  # 0: history, 1: the candidate (discriminative)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d, heads, dropout) for _ in range(blocks))
        self.ln_out = RMSNorm(d)
        for m in self.modules():  # gpsd-rec _init_weights
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def forward(self, item_embs: torch.Tensor, mask: torch.Tensor,
                candidates: torch.Tensor | None = None) -> torch.Tensor:
        """item_embs [B, L, d] (left padded), mask [B, L] bool (True = real item) -> [B, L, d];
        with ``candidates`` [B, C, d] -> [B, L + C, d], the candidates' states last."""
        b, n, _ = item_embs.shape
        dev = item_embs.device
        x = item_embs + self.segment.weight[0]
        pos = torch.arange(n, device=dev)
        eye = torch.eye(n, dtype=torch.bool, device=dev)
        visible = (torch.ones(n, n, dtype=torch.bool, device=dev).tril() & mask[:, None, :]) | eye
        if candidates is not None:
            c = candidates.shape[1]
            x = torch.cat([x, candidates + self.segment.weight[1]], 1)
            pos = torch.cat([pos, torch.full((c,), n, device=dev)])
            top = torch.cat([visible, visible.new_zeros(b, n, c)], 2)  # history sees no candidate
            bottom = torch.cat([mask[:, None, :].expand(b, c, n),
                                torch.eye(c, dtype=torch.bool, device=dev).expand(b, c, c)], 2)
            visible = torch.cat([top, bottom], 1)
        bias = torch.zeros(visible.shape, dtype=torch.float32, device=dev).masked_fill(~visible, NEG)
        bias = bias[:, None]  # [B, 1, n, n]: every head
        cos, sin = rope(pos, self.d // self.heads)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, bias, cos, sin)
        return self.ln_out(x)


class RankHead(nn.Module):
    """gpsd-rec's ``RankHead`` (v0): the candidate's state -> Linear(d, 4d) -> ReLU -> Linear(4d,
    1): the logit that the candidate is the next item. Init N(0, 0.02), biases 0."""

    def __init__(self, d: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, 1)
        for m in (self.fc1, self.fc2):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x))).squeeze(-1)

"""Training objectives. Each takes the user encoder's output and the batch's unique item vectors
(``discriminative`` takes the candidates' logits and labels).

Shapes: ``h`` [B, L, d] user states; ``items`` [U + 1, d] with row 0 the padding (zero) vector;
``tgt``/``neg`` [B, L] positions into ``items`` (0 = padding: position not trained).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

MASKED = -1e4  # finite: stays finite in bf16 and never wins a softmax against a real logit


def bce(h, items, tgt, neg, **_):
    """The reference's: BCE on each position with one sampled negative."""
    valid = tgt > 0
    hv = h[valid]
    pos = (hv * items[tgt[valid]]).sum(-1)
    negs = (hv * items[neg[valid]]).sum(-1)
    return (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
            + F.binary_cross_entropy_with_logits(negs, torch.zeros_like(negs)))


def inbatch(h, items, tgt, own, log_pop, **_):
    """Softmax over the batch's distinct items with log-popularity correction (IISAN's loss).

    Other items of the same user are masked: they are positives elsewhere in the sequence.
    """
    b_idx, l_idx = (tgt > 0).nonzero(as_tuple=True)
    t = tgt[b_idx, l_idx]                                     # [P] target column (1..U)
    logits = h[b_idx, l_idx] @ items[1:].T - log_pop[None]    # [P, U]
    mask = own[b_idx, 1:].clone()
    mask[torch.arange(len(t), device=t.device), t - 1] = False
    return F.cross_entropy(logits.masked_fill(mask, MASKED), t - 1)


def sampled_softmax(h, items, tgt, shared_neg, own=None, log_pop=None, with_inbatch=False,
                    temperature=0.0, **_):
    """Softmax over the target plus K uniform negatives (GPSD's generative pretraining).

    ``shared_neg`` [K]: one set of negatives shared by the batch; [B, K]: one set per sequence,
    shared by its positions (gpsd-rec's ``MemoryEfficientV1SampledSoftmaxLoss``). A negative that
    is the target itself (an accidental hit) is masked. ``temperature`` 0 scores by dot product;
    > 0 by cosine similarity divided by it (gpsd-rec: ``l2_norm``, 0.05). With ``with_inbatch``
    (dot product only) the batch's distinct items are added as popularity-corrected negatives.
    """
    if temperature > 0:
        h, items = F.normalize(h, dim=-1, eps=1e-6), F.normalize(items, dim=-1, eps=1e-6)
    scale = 1.0 / temperature if temperature > 0 else 1.0
    b_idx, l_idx = (tgt > 0).nonzero(as_tuple=True)
    t = tgt[b_idx, l_idx]
    hv = h[b_idx, l_idx]
    pos = (hv * items[t]).sum(-1, keepdim=True) * scale
    if shared_neg.dim() == 2:  # per sequence: [B, L, K] scores, then the trained positions
        neg = torch.einsum("bld,bkd->blk", h, items[shared_neg])[b_idx, l_idx] * scale
        hit = shared_neg[b_idx] == t[:, None]
    else:
        neg = (hv @ items[shared_neg].T) * scale
        hit = shared_neg[None] == t[:, None]
    neg = neg.masked_fill(hit, MASKED)
    parts = [pos, neg]
    if with_inbatch:
        ib = hv @ items[1:].T - log_pop[None]
        mask = own[b_idx, 1:].clone()
        mask[torch.arange(len(t), device=t.device), t - 1] = True  # target is already `pos`
        parts.append(ib.masked_fill(mask, MASKED))
    logits = torch.cat(parts, 1)
    return F.cross_entropy(logits, torch.zeros(len(t), dtype=torch.long, device=t.device))


def discriminative(logits, label, **_):
    """GPSD's discriminative training: BCE of each candidate's logit [B, C] against its label
    (1: the true next item, 0: a sampled negative)."""
    return F.binary_cross_entropy_with_logits(logits, label.to(logits.dtype))


OBJECTIVES = {"bce": bce, "inbatch": inbatch, "sampled_softmax": sampled_softmax,
              "discriminative": discriminative}

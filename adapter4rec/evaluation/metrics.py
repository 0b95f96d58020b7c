"""Full-ranking HR@K / NDCG@K.

The rank of the target is counted, not sorted: rank = 1 + the number of rankable items whose
score is >= the target's. That is exact, costs one comparison per score (cheaper than top-k or a
sort), and makes ties count against the target, so a constant model scores 0. A NaN never helps:
a NaN item counts ahead of the target, and a target whose own score is NaN is a miss.
"""
from __future__ import annotations

import math

import torch


def target_ranks(scores: torch.Tensor, targets: torch.Tensor,
                 exclude_mask: torch.Tensor | None = None) -> torch.Tensor:
    """1-based rank of each user's target among columns 1.. (column 0 is padding).

    ``exclude_mask`` [users, items] bool marks items never ranked; an excluded target gets rank
    ``inf`` (it can never be hit). Scores are not modified.
    """
    scores = scores.float()
    rows = torch.arange(len(targets), device=scores.device)
    t = scores[rows, targets]
    ahead = ~(scores < t[:, None])  # ">=", and a NaN item counts ahead of the target
    ahead[:, 0] = False
    ahead[rows, targets] = False
    if exclude_mask is not None:
        ahead &= ~exclude_mask
    rank = 1 + ahead.sum(1).float()
    rank[torch.isnan(t)] = math.inf  # a NaN target score is never a hit
    if exclude_mask is not None:
        rank[exclude_mask[rows, targets]] = math.inf
    return rank


def ranks_to_metrics(rank: torch.Tensor, k: int) -> dict[str, float]:
    hit = rank <= k
    ndcg = torch.where(hit, 1.0 / torch.log2(rank.clamp(max=1e9) + 1), torch.zeros_like(rank))
    n = max(len(rank), 1)
    return {f"HR@{k}": float(hit.sum()) / n, f"NDCG@{k}": float(ndcg.sum()) / n}


def ranking_metrics(scores: torch.Tensor, targets: torch.Tensor, k: int = 10,
                    exclude: list[list[int]] | None = None) -> dict[str, float]:
    """HR@k and NDCG@k of ``scores`` [users, items] (column j = item j, column 0 never ranked)."""
    if scores.dim() != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(f"scores must be [users, items] and targets [users]; got "
                         f"{tuple(scores.shape)} and {tuple(targets.shape)}")
    mask = None
    if exclude is not None:
        mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        for u, items in enumerate(exclude):
            if len(items):
                mask[u, torch.as_tensor(list(items), dtype=torch.long, device=scores.device)] = True
    return ranks_to_metrics(target_ranks(scores, targets.long(), mask), k)

"""The most-popular baseline: every user gets the same ranking, items by how often they occur in
the training sequences. It learns nothing about a user, so a model that does not beat it has not
learnt more than the training counts; it is the floor a study's table is read against."""
from __future__ import annotations

import numpy as np
import torch

from ..data.split import RecData
from .evaluator import _exclusions, chunk_ranks
from .metrics import ranks_to_metrics


def popularity_scores(data: RecData) -> torch.Tensor:
    """[N + 1] float: each item's count in the training sequences (``RecData.item_counts``: what
    training sees, never a valid or test target); column 0 is padding and never ranked."""
    return torch.from_numpy(data.item_counts()).float()


def popularity_order(data: RecData, seed: int = 0) -> torch.Tensor:
    """[N + 1] float: each item's place in the one ranking every user gets (higher first): by its
    training count, items of equal count in a seeded random order. Counts tie a lot on small data
    (at 10% of Scientific most of the top 10 shares its count with others), and the evaluator
    counts a tie against the target, so scoring the raw counts would understate the baseline
    (test NDCG@10 0.0101 against 0.0112 there, docs/report.md); a strict order is what a
    most-popular list is. Places are integers, exact in
    the float32 the evaluator compares in."""
    counts = popularity_scores(data).double().numpy()
    jitter = np.random.default_rng(seed).random(len(counts))
    place = np.empty(len(counts), dtype=np.float64)
    place[np.lexsort((jitter, counts))] = np.arange(len(counts))
    return torch.from_numpy(place).float()


def evaluate_popularity(data: RecData, splits=("valid", "test"), k: int = 10,
                        exclude_history: bool = True, seed: int = 0, chunk: int = 256):
    """``({split: {"HR@k", "NDCG@k"}}, {split: per-user ranks})`` of the most-popular ranking
    (``popularity_order``: ties in the counts broken by ``seed``), by the evaluator's rule
    (``evaluation.evaluator.chunk_ranks``, the user's history excluded when ``exclude_history``),
    so its numbers sit beside any model's."""
    scores = popularity_order(data, seed)
    out, ranks = {}, {}
    for split in splits:
        parts = []
        for s in range(0, data.n_users, chunk):
            users = range(s, min(s + chunk, data.n_users))
            tgt = torch.tensor([data.target(u, split) for u in users], dtype=torch.long)
            excl = torch.from_numpy(_exclusions(data, users, split)) if exclude_history else None
            parts.append(chunk_ranks(scores.expand(len(users), -1), tgt, excl))
        r = torch.cat(parts) if parts else torch.zeros(0)
        ranks[split] = r.numpy().astype(np.float32)
        out[split] = {}
        for cut in ([k] if isinstance(k, int) else list(k)):
            out[split].update(ranks_to_metrics(r, cut))
    return out, ranks

"""Full-ranking evaluation: one item-encoding pass, then all users scored in chunks.

Under DDP the items are encoded in contiguous shards (one per rank) and gathered once; users are
sharded too and only the metric sums are reduced.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.batching import item_loader, left_pad
from ..data.split import RecData
from ..errors import NonFiniteError
from ..runtime import distributed as dist

log = logging.getLogger("adapter4rec")


@torch.no_grad()
def encode_all_items(model, content, device, batch_size: int = 256, amp_dtype=None,
                     progress: bool = False, num_workers: int = 0) -> torch.Tensor:
    """[N + 1, d] item matrix (row 0 = padding, zeros); each rank encodes its shard once.
    ``num_workers`` > 0 reads content (decodes images) in DataLoader workers."""
    n = len(content)
    lo, hi = dist.shard_range(n, dist.rank(), dist.world())
    enc = model.item_encoder
    was_training = enc.training
    enc.eval()
    parts = []
    ids = np.arange(lo + 1, hi + 1)
    loader = item_loader(content, ids, batch_size, num_workers, pin_memory=device.type == "cuda")
    for _, c in tqdm(loader, desc="encode items", disable=not progress, leave=False):
        c = {k: v.to(device, non_blocking=True) for k, v in c.items()}
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            parts.append(model.encode_items(c).float())  # side network / cached states too
    enc.train(was_training)
    local = torch.cat(parts) if parts else torch.zeros(0, _dim(model), device=device)
    items = dist.gather_rows(local, n)
    return torch.cat([items.new_zeros(1, items.shape[1]), items])


def _dim(model) -> int:
    return model.user_encoder.d


# Scores of one chunk of users hold at most this many elements (128 MB in fp32), so memory stays
# bounded however many items are ranked: 256 users at 100k items, 32 users at 1M.
SCORE_BUDGET = 2 ** 25


def chunk_ranks(scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None,
                ge_out: torch.Tensor | None = None) -> torch.Tensor:
    """``metrics.target_ranks`` with the excluded items given as a small [users, H] matrix of
    distinct item ids per row (0 = none) instead of a dense [users, items] mask.

    rank = 1 + #{items j >= 1, j != target, j not excluded : not score_j < score_target}; an
    excluded target gets rank inf. "Not below" is ">=" for numbers, and counts a NaN item ahead of
    the target; a target whose own score is NaN gets rank inf (a NaN is never a hit). One
    comparison pass over the scores (into ``ge_out``, a reusable bool buffer, when given), then a
    correction over the <= H excluded items of each row.
    """
    scores = scores.float()
    rows = torch.arange(len(targets), device=scores.device)
    t = scores[rows, targets][:, None]
    lt = torch.lt(scores, t, out=ge_out) if ge_out is not None else scores < t
    ahead = scores.shape[1] - lt.view(torch.uint8).sum(1, dtype=torch.int32).long()
    # the padding column and the target itself
    ahead -= (~lt[:, 0]).long() + (~lt[rows, targets]).long()
    if exclude is not None and exclude.numel():
        other = (exclude > 0) & (exclude != targets[:, None])
        ahead -= (~(scores.gather(1, exclude) < t) & other).sum(1)
    rank = 1 + ahead.float()
    rank[torch.isnan(t[:, 0])] = math.inf
    if exclude is not None and exclude.numel():
        rank[(exclude == targets[:, None]).any(1)] = math.inf
    return rank


def _exclusions(data: RecData, users, split: str) -> np.ndarray:
    """[users, H] distinct history items of each user (0-padded)."""
    hist = [np.unique(data.history(u, split)) for u in users]
    out = np.zeros((len(hist), max((len(h) for h in hist), default=0)), dtype=np.int64)
    for b, h in enumerate(hist):
        out[b, :len(h)] = h
    return out


@torch.no_grad()
def rank_users(model, items: torch.Tensor, data: RecData, split: str, device,
               batch_size: int = 256, exclude_history: bool = True, amp_dtype=None,
               counts: dict | None = None, progress: bool = False) -> torch.Tensor:
    """Ranks of this rank's share of users' targets for ``split`` (valid | test).

    Users go in chunks of at most ``batch_size`` whose scores stay under ``SCORE_BUDGET``
    elements; the history is excluded by correcting the count (no dense mask)."""
    user_enc = model.user_encoder
    was_training = user_enc.training
    user_enc.eval()
    lo, hi = dist.shard_range(data.n_users, dist.rank(), dist.world())
    L = data.max_seq_len
    chunk = max(1, min(batch_size, SCORE_BUDGET // max(len(items), 1)))
    ranks = []
    # the vectors users are scored against: the items themselves, or (untied output table,
    # cosine scoring) the model's own target matrix
    targets = model.target_matrix(items) if hasattr(model, "target_matrix") else items
    buf = ge_buf = None  # reused across chunks: no fresh (page-faulting) allocation per chunk
    for s in tqdm(range(lo, hi, chunk), desc=f"rank {split} users", disable=not progress,
                  leave=False, unit="chunk"):
        users = range(s, min(s + chunk, hi))
        hist = torch.from_numpy(np.stack([left_pad(data.history(u, split), L) for u in users])).to(device)
        tgt = torch.tensor([data.target(u, split) for u in users], device=device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            vec = model.user_vectors(items[hist], hist > 0).float()
        if counts is not None:  # users whose vector is not finite (their targets are misses)
            counts["users"] = counts.get("users", 0) + int((~torch.isfinite(vec).all(1)).sum())
        if buf is None:
            buf = torch.empty(min(chunk, hi - lo), len(items), device=device)
            ge_buf = torch.empty(buf.shape, dtype=torch.bool, device=device)
        scores = torch.mm(vec, targets.T, out=buf[:len(users)])
        excl = torch.from_numpy(_exclusions(data, users, split)).to(device) if exclude_history else None
        ranks.append(chunk_ranks(scores, tgt, excl, ge_buf[:len(users)]))
    user_enc.train(was_training)
    return torch.cat(ranks) if ranks else torch.zeros(0, device=device)


def evaluate(model, content, data: RecData, device, splits=("valid", "test"), k=10,
             batch_size: int = 256, item_batch_size: int = 256, exclude_history: bool = True,
             amp_dtype=None, progress: bool = False, num_workers: int = 0,
             nonfinite: str = "error", return_ranks: bool = False):
    """{split: {"HR@k", "NDCG@k"}} for each split and each cut-off ``k`` (an int or several),
    from a single item-encoding pass.

    With ``return_ranks`` the result is ``(metrics, ranks)``: ``ranks[split]`` is every user's
    rank of their target (numpy float32, users in ``data``'s order, gathered from every DDP rank;
    1 = first, ``inf`` = never a hit), from which any HR@k / NDCG@k per user follows (the paired
    bootstrap of ``adapter4rec report`` uses them).

    Item or user vectors that are not finite (a model whose weights went NaN) raise
    ``NonFiniteError`` with ``nonfinite="error"``; with ``"skip"`` they are counted and logged, a
    NaN item ranks ahead of every target and a user with a NaN vector is a miss."""
    model = getattr(model, "module", model)  # DDP wrapper
    items = encode_all_items(model, content, device, item_batch_size, amp_dtype, progress, num_workers)
    bad_items = int((~torch.isfinite(items[1:]).all(1)).sum())  # the same on every rank (gathered)
    if bad_items:
        _nonfinite(nonfinite, f"{bad_items} of {data.n_items} item vectors are not finite")
    out, ranks = {}, {}
    for split in splits:
        counts = {}
        r = rank_users(model, items, data, split, device, batch_size, exclude_history, amp_dtype,
                       counts, progress)
        if return_ranks:  # every rank's contiguous share of the users, in user order
            ranks[split] = dist.gather_rows(r, data.n_users).float().cpu().numpy()
        bad_users = int(dist.all_reduce_sum(torch.tensor([counts.get("users", 0)], device=device)))
        if bad_users:
            _nonfinite(nonfinite, f"{split}: {bad_users} of {data.n_users} user vectors are not "
                                  "finite (counted as misses)")
        out[split] = {}
        for cut in ([k] if isinstance(k, int) else list(k)):
            hit = (r <= cut).sum().float()
            ndcg = torch.where(r <= cut, 1.0 / torch.log2(r.clamp(max=1e9) + 1),
                               torch.zeros_like(r)).sum()
            sums = dist.all_reduce_sum(torch.stack([hit, ndcg]).to(device).float())
            out[split][f"HR@{cut}"] = float(sums[0]) / data.n_users
            out[split][f"NDCG@{cut}"] = float(sums[1]) / data.n_users
    return (out, ranks) if return_ranks else out


def _nonfinite(policy: str, what: str) -> None:
    if policy == "skip":
        log.warning("evaluation: %s; train.nonfinite: skip counts them against the model", what)
        return
    raise NonFiniteError(f"evaluation: {what}: the model's weights or its inputs hold NaN or inf, "
                         "and no metric is reported (train.nonfinite: skip counts such items and "
                         "users as misses instead)")


def unreachable_targets(data: RecData, split: str) -> int:
    """Targets that are in the user's own history: with history excluded they can never be hit."""
    return sum(int(data.target(u, split) in set(data.history(u, split).tolist()))
               for u in range(data.n_users))


def log_unreachable(data: RecData, exclude_history: bool) -> None:
    """Warn, per split, of the targets that with history excluded can never be hit."""
    if not exclude_history:
        return
    for split in ("valid", "test"):
        n = unreachable_targets(data, split)
        if n:
            log.warning("%s: %d of %d targets are in the user's own history and, with "
                        "data.exclude_history, can never be hit", split, n, data.n_users)

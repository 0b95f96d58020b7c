"""AUC of the next item against sampled negatives (GPSD's evaluation, ``eval.metric: auc``).

For each user and split the true next item is scored against ``n`` negatives drawn uniformly from
the items the user never interacted with (in the whole sequence), with a seed fixed per (seed,
user, split): the same negatives at every epoch and in every run. A user's AUC is the share of
negatives scored below the target (a tie counts a half); the split's AUC is the mean over users.
The splits:

- ``train``: history = the training sequence but its last item, target = that item (the
  discriminative model's training positive, with fresh negatives): the train side of the
  generalisation gap;
- ``valid`` / ``test``: the leave-one-out targets, as the full-ranking evaluation.

For a discriminative model (a head on the appended candidate) the split's ``loss`` is the balanced
BCE of its logits, 0.5 * (BCE of the target + mean BCE of the negatives): the expectation of the
training loss (one positive, one negative per user), so train and test losses compare.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.batching import left_pad
from ..data.split import RecData
from ..errors import ConfigError
from ..runtime import distributed as dist
from .evaluator import _nonfinite, encode_all_items

SPLITS = {"train": 0, "valid": 1, "test": 2}


def history_and_target(data: RecData, u: int, split: str) -> tuple[np.ndarray, int]:
    if split == "train":
        seq = data.train_seq(u)
        return seq[:-1], int(seq[-1])
    return data.history(u, split), data.target(u, split)


def sample_negatives(data: RecData, u: int, split: str, n: int, seed: int) -> np.ndarray:
    """``n`` distinct items user ``u`` never interacted with, from a generator seeded by (seed,
    user, split) alone."""
    if split not in SPLITS:
        raise ConfigError(f"AUC split must be one of {', '.join(SPLITS)}; got {split!r}")
    seen = np.unique(data.seqs[u])
    if data.n_items - len(seen) < n:
        raise ConfigError(f"config key 'eval.auc_negatives' is {n}, but user "
                          f"{data.user_ids[u]} has only {data.n_items - len(seen)} items it never "
                          "interacted with: lower eval.auc_negatives")
    rng = np.random.default_rng([seed, u, SPLITS[split]])
    out = np.zeros(0, dtype=np.int64)
    while len(out) < n:  # rejection sampling; a user sees a tiny share of the items
        draw = rng.integers(1, data.n_items + 1, size=2 * n)
        draw = draw[~np.isin(draw, seen) & ~np.isin(draw, out)]
        _, first = np.unique(draw, return_index=True)
        out = np.concatenate([out, draw[np.sort(first)]])
    return out[:n]


@torch.no_grad()
def evaluate_auc(model, content, data: RecData, device, splits=("valid", "test"),
                 n_negatives: int = 100, seed: int = 0, batch_size: int = 256,
                 item_batch_size: int = 256, amp_dtype=None, num_workers: int = 0,
                 nonfinite: str = "error", max_users: int = 0) -> dict:
    """{split: {"AUC": mean per-user AUC, "loss": balanced BCE (discriminative models only)}};
    ``max_users`` > 0 scores only that many users, the first of a permutation seeded by ``seed``
    (the same users at every epoch and for every split)."""
    model = getattr(model, "module", model)  # DDP wrapper
    items = encode_all_items(model, content, device, item_batch_size, amp_dtype,
                             num_workers=num_workers)
    was_training = model.training
    model.eval()
    chosen = np.arange(data.n_users)
    if 0 < max_users < data.n_users:
        chosen = np.sort(np.random.default_rng([seed, 7]).permutation(data.n_users)[:max_users])
    n_users = len(chosen)
    lo, hi = dist.shard_range(n_users, dist.rank(), dist.world())
    L, out = data.max_seq_len, {}
    for split in splits:
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # auc, loss, non-finite users
        for s in range(lo, hi, batch_size):
            users = [int(u) for u in chosen[s:min(s + batch_size, hi)]]
            pairs = [history_and_target(data, u, split) for u in users]
            hist = torch.from_numpy(np.stack([left_pad(h, L) for h, _ in pairs])).to(device)
            cand = torch.from_numpy(np.stack([
                np.concatenate([[t], sample_negatives(data, u, split, n_negatives, seed)])
                for u, (_, t) in zip(users, pairs)])).to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                scores = model.candidate_scores(items, hist, cand).float()
            bad = ~torch.isfinite(scores).all(1)
            pos, neg = scores[:, :1], scores[:, 1:]
            auc = ((neg < pos).double().sum(1) + 0.5 * (neg == pos).double().sum(1)) / n_negatives
            auc[bad] = 0.0  # a user without finite scores is a miss
            loss = 0.5 * (F.softplus(-pos[:, 0]) + F.softplus(neg).mean(1)).double()
            sums += torch.stack([auc.sum(), loss[~bad].sum(), bad.sum().double()])
        sums = dist.all_reduce_sum(sums)
        if int(sums[2]):
            _nonfinite(nonfinite, f"{split}: {int(sums[2])} of {n_users} users have scores "
                                  "that are not finite (counted as AUC 0)")
        out[split] = {"AUC": float(sums[0]) / n_users}
        if not model.yields_user_vectors:
            out[split]["loss"] = float(sums[1]) / max(n_users - int(sums[2]), 1)
    model.train(was_training)
    return out

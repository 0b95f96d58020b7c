"""Batches: training batches of distinct items, and item passes (evaluation, cache build).

A training batch is built whole in a DataLoader worker: the users of the step, their inputs and
targets, the negatives, and *the unique item ids among all of them* with those items' content.
The model then encodes each distinct item once and indexes back, and padding is never encoded.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError
from ..runtime.distributed import shard_range
from .split import RecData


def left_pad(seq: np.ndarray, length: int) -> np.ndarray:
    out = np.zeros(length, dtype=np.int64)
    seq = seq[-length:]
    if len(seq):
        out[-len(seq):] = seq
    return out


def unique_index(*arrays: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Distinct non-padding ids among ``arrays`` and each array re-expressed as positions in
    [0, 1..U], where 0 stands for padding (a zero vector) and k for ``ids[k - 1]``."""
    flat = np.concatenate([a.ravel() for a in arrays])
    # 0 is prepended so that ids[0] == 0 always and padding maps to position 0
    ids, inverse = np.unique(np.concatenate([[0], flat]), return_inverse=True)
    inverse = inverse[1:]
    out, start = [], 0
    for a in arrays:
        out.append(inverse[start:start + a.size].reshape(a.shape))
        start += a.size
    return ids[1:], out


class ItemBatches(torch.utils.data.Dataset):
    """Consecutive batches of item ids with their content, for one pass over all items (evaluation,
    cache build). In a DataLoader with workers, image decoding runs beside the encoder."""

    def __init__(self, content, ids: np.ndarray, batch_size: int):
        self.content, self.ids, self.bs = content, ids, batch_size

    def __len__(self):
        return (len(self.ids) + self.bs - 1) // self.bs

    def __getitem__(self, i):
        ids = self.ids[i * self.bs:(i + 1) * self.bs]
        return int(ids[0]), self.content.get(ids)


def item_loader(content, ids: np.ndarray, batch_size: int, num_workers: int = 0,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """(first id, content) batches of ``ids`` in order; ``num_workers`` 0 reads in this process.

    The loader has a generator of its own: starting its iterator would otherwise draw a seed from
    the global torch RNG, so whether an item pass ran (a cache built, or not) would change the
    dropout of the training that follows."""
    return torch.utils.data.DataLoader(ItemBatches(content, ids, batch_size), batch_size=None,
                                       num_workers=num_workers, pin_memory=pin_memory,
                                       generator=torch.Generator().manual_seed(0))


class TrainBatches(torch.utils.data.Dataset):
    """Step-indexed training batches of one epoch: item ``s`` is the whole batch of step ``s``.

    The user order and the negatives are drawn from (seed, epoch, step) alone, so a batch is the
    same whatever the number of workers, after a resume, and on every DDP rank. Under DDP every
    rank builds the whole global batch (cheap index work), keeps its slice of the users
    (``np.array_split``) and the content of a contiguous shard of the batch's distinct items; the
    model gathers the encoded shards (``distributed.gather_rows``), so item positions, candidate
    sets and negatives are exactly those of one process running the global batch.
    ``global_positions`` is the global batch's number of trained positions (for the loss scale).
    """

    def __init__(self, data: RecData, content, batch_size: int, objective: str = "bce",
                 num_negatives: int = 0, seed: int = 0, rank: int = 0, world: int = 1,
                 last_only: bool = False, negatives_per: str = "batch", with_inbatch: bool = True):
        self.data, self.content, self.bs = data, content, batch_size
        self.objective, self.k, self.seed = objective, num_negatives, seed
        self.negatives_per = negatives_per  # sampled_softmax: batch | sequence (GPSD)
        # sampled_softmax reads `own` (each user's items among the batch's) only with in-batch
        # negatives; building it is most of a large catalogue's batch time
        self.with_inbatch = with_inbatch
        self.rank, self.world, self.last_only = rank, world, last_only
        self.epoch = 0
        self.train = [data.train_seq(u) for u in range(data.n_users)]
        self.seen = [np.unique(s) for s in self.train]
        counts = data.item_counts()
        self.log_pop = np.log(counts + 1.0).astype(np.float32)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (self.data.n_users + self.bs - 1) // self.bs

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, *key])

    def __getitem__(self, step: int) -> dict:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.data.n_users)
        users = order[step * self.bs:(step + 1) * self.bs]
        L = self.data.max_seq_len
        if self.objective == "discriminative":
            return self._candidates(step, users)
        seqs = np.stack([left_pad(self.train[u], L + 1) for u in users])
        inp = seqs[:, :-1]
        tgt = np.where(inp > 0, seqs[:, 1:], 0)  # a position is trained only where it has an input
        if self.last_only:  # CPC: only the last position is trained
            tgt = np.where(np.arange(L) == L - 1, tgt, 0)
        rng = self._rng(step)
        extra = []
        if self.objective == "bce":
            extra.append(np.where(tgt > 0, self._negatives(users, tgt.shape, rng), 0))
        elif self.objective == "sampled_softmax":  # [K], or [B, K] (each sequence its own)
            per_seq = self.negatives_per == "sequence"
            extra.append(rng.integers(1, self.data.n_items + 1,
                                      size=(len(users), self.k) if per_seq else self.k))
        ids, (inp_i, tgt_i, *extra_i) = unique_index(inp, tgt, *extra)
        n_global = int((tgt > 0).sum())
        # this rank's slice of the users, and its shard of the distinct items to encode
        rows = np.array_split(np.arange(len(users)), self.world)[self.rank]
        users, inp_i, tgt_i = users[rows], inp_i[rows], tgt_i[rows]
        if self.objective == "bce" or extra and extra[0].ndim == 2:
            extra_i[0] = extra_i[0][rows]
        lo, hi = shard_range(len(ids), self.rank, self.world)
        batch = {"ids": torch.from_numpy(ids), "content": self.content.get(ids[lo:hi]),
                 "inp": torch.from_numpy(inp_i), "tgt": torch.from_numpy(tgt_i),
                 "log_pop": torch.from_numpy(self.log_pop[ids]),
                 "global_positions": torch.tensor(n_global)}
        if self.objective == "bce":
            batch["neg"] = torch.from_numpy(extra_i[0])
        elif self.objective == "sampled_softmax":
            batch["shared_neg"] = torch.from_numpy(extra_i[0])
        if self.objective == "inbatch" or (self.objective == "sampled_softmax" and self.with_inbatch):
            # own[b, j]: item ids[j - 1] is in user b's training sequence (masked as a negative)
            own = np.zeros((len(users), len(ids) + 1), dtype=bool)
            for b, u in enumerate(users):
                own[b, np.searchsorted(ids, np.intersect1d(self.seen[u], ids)) + 1] = True
            batch["own"] = torch.from_numpy(own)
        return batch

    def _candidates(self, step: int, users: np.ndarray) -> dict:
        """GPSD's discriminative batch: each user's training sequence but its last item as the
        history, and two candidates, that last item (label 1) and one sampled unseen item (0)."""
        L, rng = self.data.max_seq_len, self._rng(step)
        hist = np.stack([left_pad(self.train[u][:-1], L) for u in users])
        pos = np.array([self.train[u][-1] for u in users], dtype=np.int64)[:, None]
        cand = np.concatenate([pos, self._negatives(users, pos.shape, rng)], 1)
        label = np.tile(np.array([1.0, 0.0], dtype=np.float32), (len(users), 1))
        ids, (inp_i, cand_i) = unique_index(hist, cand)
        rows = np.array_split(np.arange(len(users)), self.world)[self.rank]
        lo, hi = shard_range(len(ids), self.rank, self.world)
        return {"ids": torch.from_numpy(ids), "content": self.content.get(ids[lo:hi]),
                "inp": torch.from_numpy(inp_i[rows]), "cand": torch.from_numpy(cand_i[rows]),
                "tgt": torch.from_numpy(cand_i[rows]),  # the trained positions (loss weighting)
                "label": torch.from_numpy(label[rows]), "log_pop": torch.from_numpy(self.log_pop[ids]),
                "global_positions": torch.tensor(int(cand.size))}

    def _negatives(self, users: np.ndarray, shape: tuple, rng: np.random.Generator) -> np.ndarray:
        """One uniform negative per position among items the user has not interacted with."""
        n = self.data.n_items
        neg = rng.integers(1, n + 1, size=shape)
        for b, u in enumerate(users):
            seen = self.seen[u]
            if len(seen) >= n:
                raise DataError(f"user {self.data.user_ids[u]} interacted with every item: "
                                "no negative can be sampled")
            bad = np.isin(neg[b], seen)
            while bad.any():  # rejection sampling; users see a tiny share of the items
                neg[b, bad] = rng.integers(1, n + 1, size=int(bad.sum()))
                bad = np.isin(neg[b], seen)
        return neg

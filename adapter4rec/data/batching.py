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
                 last_only: bool = False):
        self.data, self.content, self.bs = data, content, batch_size
        self.objective, self.k, self.seed = objective, num_negatives, seed
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
        seqs = np.stack([left_pad(self.train[u], L + 1) for u in users])
        inp = seqs[:, :-1]
        tgt = np.where(inp > 0, seqs[:, 1:], 0)  # a position is trained only where it has an input
        if self.last_only:  # CPC: only the last position is trained
            tgt = np.where(np.arange(L) == L - 1, tgt, 0)
        rng = self._rng(step)
        extra = []
        if self.objective == "bce":
            extra.append(np.where(tgt > 0, self._negatives(users, tgt.shape, rng), 0))
        elif self.objective == "sampled_softmax":
            extra.append(rng.integers(1, self.data.n_items + 1, size=self.k))
        ids, (inp_i, tgt_i, *extra_i) = unique_index(inp, tgt, *extra)
        n_global = int((tgt > 0).sum())
        # this rank's slice of the users, and its shard of the distinct items to encode
        rows = np.array_split(np.arange(len(users)), self.world)[self.rank]
        users, inp_i, tgt_i = users[rows], inp_i[rows], tgt_i[rows]
        if self.objective == "bce":
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
        if self.objective != "bce":
            # own[b, j]: item ids[j - 1] is in user b's training sequence (masked as a negative)
            own = np.zeros((len(users), len(ids) + 1), dtype=bool)
            for b, u in enumerate(users):
                own[b, np.searchsorted(ids, np.intersect1d(self.seen[u], ids)) + 1] = True
            batch["own"] = torch.from_numpy(own)
        return batch

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

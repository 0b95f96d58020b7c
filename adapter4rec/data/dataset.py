"""Preprocessing (as the reference), the leave-one-out split, and training batches.

Flow: read files -> drop users with < min_seq_len interactions -> keep the last max_seq_len + 3
items -> re-index the items that occur to 1..N (0 = padding) -> train on s[:-2], validate on
s[-2], test on s[-1].

A training batch is built whole in a DataLoader worker: the users of the step, their inputs and
targets, the negatives, and *the unique item ids among all of them* with those items' content.
The model then encodes each distinct item once and indexes back, and padding is never encoded.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..training.distributed import shard_range
from .readers import check_known_items, read_items, read_users

log = logging.getLogger("adapter4rec")


@dataclass
class RecData:
    """Sequences re-indexed to 1..N; ``item_ids[i - 1]`` is the original id of item i."""

    item_ids: list[str]
    texts: list[str]
    user_ids: list[str]
    seqs: list[np.ndarray]
    max_seq_len: int
    source: str = ""
    stats: dict = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.seqs)

    def train_seq(self, u: int) -> np.ndarray:
        return self.seqs[u][:-2]

    def history(self, u: int, split: str) -> np.ndarray:
        """Items seen before the target of ``split`` (valid: s[:-2], test: s[:-1])."""
        return self.seqs[u][:-2] if split == "valid" else self.seqs[u][:-1]

    def target(self, u: int, split: str) -> int:
        return int(self.seqs[u][-2] if split == "valid" else self.seqs[u][-1])

    def item_counts(self) -> np.ndarray:
        """Occurrences of each item in the training parts (index = item id)."""
        c = np.zeros(self.n_items + 1, dtype=np.int64)
        for u in range(self.n_users):
            np.add.at(c, self.train_seq(u), 1)
        return c


def build_data(path: str | Path, users_file: str = "users.tsv", items_file: str = "items.tsv",
               min_seq_len: int = 5, max_seq_len: int = 10, with_abstract: bool = False,
               unknown_items: str = "error") -> RecData:
    if max_seq_len < 1:
        raise ConfigError(f"data.max_seq_len must be at least 1, got {max_seq_len}")
    if min_seq_len < 3:
        raise ConfigError("data.min_seq_len must be at least 3: leave-one-out needs one training "
                          f"pair, a validation and a test item; got {min_seq_len}")
    root = Path(path)
    if not str(path) or not root.is_dir():
        raise ConfigError(f"data.path {str(path)!r} is not a folder; it must hold "
                          f"{items_file} and {users_file}")
    items = read_items(root / items_file, with_abstract=with_abstract)
    users = read_users(root / users_file)
    users, dropped = check_known_items(users, items, root / users_file, policy=unknown_items)
    if dropped:
        log.warning("dropped %d interactions with items absent from %s", dropped, root / items_file)
    kept = [(u, s[-(max_seq_len + 3):]) for u, s in users if len(s) >= min_seq_len]
    if len(kept) < 2:
        raise DataError(f"only {len(kept)} user(s) have at least min_seq_len={min_seq_len} "
                        "interactions; at least 2 are needed", path=root / users_file)
    # Items that occur are numbered 1..N in the order of the items file: stable across runs.
    occurring = {i for _, s in kept for i in s}
    item_ids = [i for i in items if i in occurring]
    index = {i: n + 1 for n, i in enumerate(item_ids)}
    seqs = [np.fromiter((index[i] for i in s), dtype=np.int64, count=len(s)) for _, s in kept]
    stats = {"users_read": len(users), "users": len(kept), "items": len(item_ids),
             "interactions": int(sum(len(s) for s in seqs)), "dropped_unknown": dropped}
    log.info("data %s: %d users (of %d read), %d items, %d interactions", root, len(kept),
             len(users), len(item_ids), stats["interactions"])
    return RecData(item_ids, [items[i] for i in item_ids], [u for u, _ in kept], seqs,
                   max_seq_len, str(root), stats)


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
    """(first id, content) batches of ``ids`` in order; ``num_workers`` 0 reads in this process."""
    return torch.utils.data.DataLoader(ItemBatches(content, ids, batch_size), batch_size=None,
                                       num_workers=num_workers, pin_memory=pin_memory)


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

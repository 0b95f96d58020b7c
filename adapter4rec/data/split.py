"""Preprocessing (as the reference) and the leave-one-out split.

Flow: read files -> drop users with < min_seq_len interactions -> keep the last max_seq_len + 3
items -> re-index the items that occur to 1..N (0 = padding) -> train on s[:-2], validate on
s[-2], test on s[-1].
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
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
    if min_seq_len < 4:
        raise ConfigError("data.min_seq_len must be at least 4: leave-one-out holds out a "
                          "validation and a test item, and a training pair needs two more; got "
                          f"{min_seq_len}")
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
                   max_seq_len, stats)

"""Preprocessing (as the reference) and the leave-one-out split.

Flow: read files (or take pandas frames) -> drop users with < min_seq_len interactions -> keep the
last max_seq_len + 3 items -> keep a seeded share of the users (``user_fraction``, default all) ->
re-index the items that occur to 1..N (0 = padding) -> train on s[:-2], validate on s[-2], test on
s[-1].

    data = RecData.from_files("Dataset/scientific", min_seq_len=5, max_seq_len=10)
    data = RecData.from_frames(interactions, items, user_col="user", item_col="item",
                               time_col="timestamp", text_cols=["title"])
    data.save("runs/x/data")   # users.tsv + items.tsv that read back into the same data
    RecData.from_files("Dataset/MIND", user_fraction=0.25, fraction_seed=0)  # a quarter of the users
"""
from __future__ import annotations

import hashlib
import html
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .readers import check_known_items, read_items, read_users

log = logging.getLogger("adapter4rec")

KEPT_USERS_FILE = "users_kept.txt"  # in a run folder: the users a data.user_fraction < 1 kept


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

    @classmethod
    def from_files(cls, path: str | Path, users_file: str = "users.tsv", items_file: str = "items.tsv",
                   min_seq_len: int = 5, max_seq_len: int = 10, with_abstract: bool = False,
                   unknown_items: str = "error", user_fraction: float = 1.0,
                   fraction_seed: int = 0) -> "RecData":
        """The data of a dataset folder (``build_data``; the ``data.*`` config keys)."""
        return build_data(path, users_file, items_file, min_seq_len, max_seq_len, with_abstract,
                          unknown_items, user_fraction, fraction_seed)

    @classmethod
    def from_frames(cls, interactions, items, user_col: str = "user_id", item_col: str = "item_id",
                    time_col: str | None = None, text_cols=("title",), min_seq_len: int = 5,
                    max_seq_len: int = 10, unknown_items: str = "error", user_fraction: float = 1.0,
                    fraction_seed: int = 0) -> "RecData":
        """The data of two pandas DataFrames, filtered and split as the files are.

        ``interactions``: one row per interaction in long format (as RecBole's ``.inter`` files),
        ordered by ``time_col`` (stable: ties keep the frame's order), or in the frame's order
        without it. ``items``: one row per item, ``item_col`` and the ``text_cols`` joined by a
        space into the item's text (none for image / ID items). Ids become strings; titles are
        taken as they are (no HTML unescaping) and may hold tabs. ``user_fraction`` and
        ``fraction_seed``: as ``data.user_fraction`` / ``data.fraction_seed``."""
        _check_fraction(user_fraction)
        _check_columns(interactions, [user_col, item_col] + ([time_col] if time_col else []),
                       "interactions")
        text_cols = [text_cols] if isinstance(text_cols, str) else list(text_cols)
        _check_columns(items, [item_col] + text_cols, "items")
        table = {}
        for n, row in enumerate(items[[item_col] + text_cols].itertuples(index=False), 1):
            item_id = str(row[0]).strip()
            if not item_id or len(item_id.split()) > 1:
                raise DataError(f"item id {item_id!r} is empty or contains whitespace", "items frame", n)
            if item_id in table:
                raise DataError(f"duplicate item id {item_id!r}; item ids must be unique", "items frame", n)
            text = " ".join(str(v).strip() for v in row[1:] if v is not None and v == v and str(v).strip())
            if text_cols and not text:
                raise DataError(f"item {item_id!r} has an empty title", "items frame", n)
            table[item_id] = text
        frame = interactions.sort_values(time_col, kind="stable") if time_col else interactions
        sequences: dict[str, list[str]] = {}
        for user, item in zip(frame[user_col].astype(str), frame[item_col].astype(str)):
            sequences.setdefault(user.strip(), []).append(item.strip())
        users = list(sequences.items())
        return _build(users, table, min_seq_len, max_seq_len, unknown_items, "interactions frame",
                      "interactions frame", user_fraction, fraction_seed)

    def save(self, folder: str | Path) -> Path:
        """``users.tsv`` and ``items.tsv`` in ``folder`` that ``from_files`` (with this data's
        ``max_seq_len``) reads back into the same data: titles are HTML-escaped, so a tab or a
        newline in a title survives (the readers unescape)."""
        from ..runtime.io import write_text_atomic

        folder = Path(folder)
        items = "".join(f"{i}\t{_escape(t)}\n" if t else f"{i}\n"
                        for i, t in zip(self.item_ids, self.texts))
        users = "".join(f"{u}\t{' '.join(self.item_ids[j - 1] for j in s)}\n"
                        for u, s in zip(self.user_ids, self.seqs))
        write_text_atomic(folder / "items.tsv", items)
        write_text_atomic(folder / "users.tsv", users)
        return folder

    def save_kept_users(self, folder: str | Path) -> Path | None:
        """Record in ``folder`` (a run folder) which users a ``user_fraction`` below 1 kept:
        ``users_kept.txt``, one user id a line in the data's order. With every user kept there is
        nothing to record, and a list left there by an earlier run in the folder is removed."""
        from ..runtime.io import write_text_atomic

        path = Path(folder) / KEPT_USERS_FILE
        if self.stats.get("user_fraction", 1.0) >= 1.0:
            if path.is_file():
                path.unlink()
            return None
        write_text_atomic(path, "".join(f"{u}\n" for u in self.user_ids))
        return path

    def item_counts(self) -> np.ndarray:
        """Occurrences of each item in the training parts (index = item id)."""
        c = np.zeros(self.n_items + 1, dtype=np.int64)
        for u in range(self.n_users):
            np.add.at(c, self.train_seq(u), 1)
        return c


def build_data(path: str | Path, users_file: str = "users.tsv", items_file: str = "items.tsv",
               min_seq_len: int = 5, max_seq_len: int = 10, with_abstract: bool = False,
               unknown_items: str = "error", user_fraction: float = 1.0,
               fraction_seed: int = 0) -> RecData:
    _check_lengths(min_seq_len, max_seq_len)
    _check_fraction(user_fraction)
    root = check_folder(path, users_file, items_file)
    items = read_items(root / items_file, with_abstract=with_abstract)
    users = read_users(root / users_file)
    return _build(users, items, min_seq_len, max_seq_len, unknown_items, root / users_file,
                  root / items_file, user_fraction, fraction_seed)


def _check_lengths(min_seq_len: int, max_seq_len: int) -> None:
    if max_seq_len < 1:
        raise ConfigError(f"data.max_seq_len must be at least 1, got {max_seq_len}")
    if min_seq_len < 4:
        raise ConfigError("data.min_seq_len must be at least 4: leave-one-out holds out a "
                          "validation and a test item, and a training pair needs two more; got "
                          f"{min_seq_len}")


def _check_fraction(user_fraction) -> None:
    if isinstance(user_fraction, bool) or not isinstance(user_fraction, (int, float)) or \
            not 0.0 < user_fraction <= 1.0:  # NaN fails the comparison too
        raise ConfigError(f"data.user_fraction must be a number in (0, 1], got {user_fraction!r}")


def kept_by_fraction(user_ids: list[str], user_fraction: float, seed: int = 0) -> list[int]:
    """Positions (ascending) of the users that ``user_fraction`` keeps of ``user_ids``.

    A seeded permutation of the users, its first ``round(user_fraction * n)`` (at least one): the
    users are ordered by a hash of (seed, user id), so the choice depends on the seed and the ids
    only (not on numpy's generator, nor the file order), and for one seed a smaller fraction keeps
    a subset of a larger fraction's users."""
    n = len(user_ids)
    k = min(n, max(1, math.floor(user_fraction * n + 0.5)))
    if k >= n:
        return list(range(n))

    def rank(j: int):
        key = hashlib.blake2b(f"{seed}\t{user_ids[j]}".encode(), digest_size=16).digest()
        return key, j

    return sorted(sorted(range(n), key=rank)[:k])


def check_folder(path, users_file: str = "users.tsv", items_file: str = "items.tsv") -> Path:
    """``data.path`` as a folder, or a one-line ConfigError saying how to set it."""
    root = Path(path)
    if not str(path) or not root.is_dir():
        raise ConfigError(f"data.path {str(path)!r} is not a folder; it must hold {items_file} and "
                          f"{users_file} (give it with --set data.path=DIR; the shipped configs "
                          "find the datasets under $ADAPTER4REC_DATASETS, default Dataset/)")
    return root


def _escape(text: str) -> str:
    """HTML-escape a title for an items file: ``&``, ``<``, ``>`` and every control character
    (tab, newline, ...), which the reader's ``html.unescape`` restores exactly."""
    out = html.escape(text, quote=False)
    return "".join(f"&#{ord(c)};" if ord(c) < 32 or c == "\x7f" else c for c in out)


def _check_columns(frame, columns, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(f"the {what} frame has no column {', '.join(map(repr, missing))} (it has: "
                          f"{', '.join(map(str, frame.columns))})")


def _build(users, items: dict, min_seq_len: int, max_seq_len: int, unknown_items: str, users_path,
           items_path, user_fraction: float = 1.0, fraction_seed: int = 0) -> RecData:
    """Filter, truncate, subsample and re-index ``users`` [(user_id, [item_id, ...])] over
    ``items``."""
    _check_lengths(min_seq_len, max_seq_len)
    _check_fraction(user_fraction)
    users, dropped = check_known_items(users, items, users_path, policy=unknown_items)
    if dropped:
        log.warning("dropped %d interactions with items absent from %s", dropped, items_path)
    kept = [(u, s[-(max_seq_len + 3):]) for u, s in users if len(s) >= min_seq_len]
    if len(kept) < 2:
        raise DataError(f"only {len(kept)} user(s) have at least min_seq_len={min_seq_len} "
                        "interactions; at least 2 are needed", path=users_path)
    eligible = len(kept)
    if user_fraction < 1.0:
        kept = [kept[j] for j in kept_by_fraction([u for u, _ in kept], user_fraction, fraction_seed)]
        if len(kept) < 2:
            raise DataError(f"data.user_fraction={user_fraction} keeps {len(kept)} of the {eligible} "
                            "users; at least 2 are needed", path=users_path)
        log.info("data.user_fraction %g (data.fraction_seed %d): %d of %d users kept",
                 user_fraction, fraction_seed, len(kept), eligible)
    # Items that occur are numbered 1..N in the order of the items file: stable across runs.
    occurring = {i for _, s in kept for i in s}
    item_ids = [i for i in items if i in occurring]
    index = {i: n + 1 for n, i in enumerate(item_ids)}
    seqs = [np.fromiter((index[i] for i in s), dtype=np.int64, count=len(s)) for _, s in kept]
    stats = {"users_read": len(users), "users": len(kept), "items": len(item_ids),
             "interactions": int(sum(len(s) for s in seqs)), "dropped_unknown": dropped,
             "users_eligible": eligible, "user_fraction": float(user_fraction),
             "fraction_seed": int(fraction_seed), "kept_users": len(kept)}
    log.info("data %s: %d users (of %d read), %d items, %d interactions", Path(str(users_path)).parent
             if isinstance(users_path, Path) else users_path, len(kept),
             len(users), len(item_ids), stats["interactions"])
    return RecData(item_ids, [items[i] for i in item_ids], [u for u, _ in kept], seqs,
                   max_seq_len, stats)

"""The hidden-state cache on disk: one memory-mapped file per (data, backbone) and an index.

Layout of a cache folder::

    hidden.bin   raw [items + 1, layers, hidden] array, float16 or bfloat16 (as 16-bit words);
                 row 0 is padding (zeros), row i is item i of the dataset (1..N)
    index.json   {"format", "version", "shape", "dtype", "layers", "modality", "fingerprint",
                  "complete", "build_seconds", ...}

The fingerprint (``fingerprint.py``) says what the rows were computed from; a cache whose
fingerprint differs is stale: it is rebuilt, never used, and the log says what changed.

Writes are atomic: the array is written to a temporary file and renamed, then the index is
written (also by rename); a reader that finds no complete index, or an array of the wrong size,
treats the folder as absent. A process that already maps the old file keeps reading the old
inode, so a rebuild never changes the rows under a running job.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..runtime.io import write_bytes_atomic
from .fingerprint import differences

log = logging.getLogger("adapter4rec")

FORMAT = "adapter4rec-hidden-cache"
VERSION = 1
ARRAY = "hidden.bin"
INDEX = "index.json"
# numpy has no bfloat16: bf16 rows are stored as their 16-bit words and viewed back in torch
NUMPY_DTYPES = {"float16": np.float16, "bfloat16": np.uint16}
FP16_MAX = 65504.0


def read_index(folder: str | Path) -> dict | None:
    p = Path(folder) / INDEX
    if not p.is_file():
        return None
    try:
        index = json.loads(p.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return index if index.get("format") == FORMAT else None


class HiddenCache:
    """A complete cache folder, opened read-only: ``rows(ids)`` -> tensor [n, layers, hidden].

    The memory map is opened lazily in each process (it is dropped when pickled, e.g. into a
    DataLoader worker started with spawn, and reopened there).
    """

    def __init__(self, folder: str | Path, index: dict | None = None):
        self.folder = Path(folder)
        self.index = index or read_index(self.folder)
        if not self.index or not self.index.get("complete"):
            raise DataError("no complete hidden-state cache here (build it with `adapter4rec cache "
                            "build --config ...`)", self.folder)
        self.shape = tuple(self.index["shape"])
        self.dtype = self.index["dtype"]
        self.layers = list(self.index["layers"])
        self._map = None
        self._pid = None
        expected = int(np.prod(self.shape)) * 2
        size = (self.folder / ARRAY).stat().st_size if (self.folder / ARRAY).is_file() else -1
        if size != expected:
            raise DataError(f"{ARRAY} holds {size} bytes, its index says {expected}: the cache is "
                            "damaged; delete the folder or rebuild", self.folder)

    def __len__(self) -> int:
        return self.shape[0] - 1

    @property
    def array(self) -> np.ndarray:
        if self._map is None or self._pid != os.getpid():
            self._map = np.memmap(self.folder / ARRAY, dtype=NUMPY_DTYPES[self.dtype], mode="r",
                                  shape=self.shape)
            self._pid = os.getpid()
        return self._map

    def rows(self, ids: np.ndarray, layers: list[int] | None = None) -> torch.Tensor:
        """Rows ``ids`` (dataset item numbers, 0 = padding) as a torch tensor of the cache dtype;
        ``layers`` picks and orders a subset of the cached layers."""
        a = self.array[np.asarray(ids, dtype=np.int64)]
        if layers is not None and layers != self.layers:
            a = a[:, [self.layers.index(i) for i in layers]]
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t.view(torch.bfloat16) if self.dtype == "bfloat16" else t

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_map"] = None
        state["_pid"] = None
        return state


def open_cache(folder: str | Path, fingerprint: dict) -> HiddenCache | None:
    """The cache in ``folder`` if it is complete and its fingerprint equals ``fingerprint``; None
    otherwise (logging why a cache that exists is not used)."""
    folder = Path(folder)
    index = read_index(folder)
    if index is None:
        return None
    if not index.get("complete"):
        log.warning("hidden-state cache %s is incomplete (an interrupted build): rebuilding", folder)
        return None
    if index.get("version") != VERSION:
        log.warning("hidden-state cache %s has format version %s (this library writes %s): "
                    "rebuilding", folder, index.get("version"), VERSION)
        return None
    changed = differences(index.get("fingerprint", {}), fingerprint)
    if changed:
        log.warning("hidden-state cache %s is stale (changed: %s): rebuilding", folder,
                    ", ".join(changed))
        return None
    try:
        return HiddenCache(folder, index)
    except DataError as e:
        log.warning("%s: rebuilding", e)
        return None


class Writer:
    """Writes a cache folder: ``create`` the array, ``write`` row blocks, ``finish`` the index.

    Several processes (DDP ranks) may write disjoint rows of the same array once it is created.
    """

    def __init__(self, folder: str | Path, n_items: int, layers: list[int], hidden: int,
                 dtype: str = "float16"):
        self.folder = Path(folder)
        self.shape = (n_items + 1, len(layers), hidden)
        self.layers, self.dtype = list(layers), dtype
        self.tmp = self.folder / f".{ARRAY}.building"
        self._map = None

    def create(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / INDEX).unlink(missing_ok=True)  # the old rows are about to be replaced
        with open(self.tmp, "wb") as f:
            f.truncate(int(np.prod(self.shape)) * 2)  # sparse file of zeros: row 0 stays padding

    def open(self) -> None:
        self._map = np.memmap(self.tmp, dtype=NUMPY_DTYPES[self.dtype], mode="r+", shape=self.shape)

    def write(self, start: int, rows: torch.Tensor) -> None:
        """Rows for items ``start .. start + len(rows) - 1`` (1-based item numbers)."""
        rows = rows.detach().float().cpu()
        if self.dtype == "float16":
            big = float(rows.abs().max()) if rows.numel() else 0.0
            if not np.isfinite(big) or big > FP16_MAX:
                raise DataError(f"a hidden state of magnitude {big:g} does not fit float16; set "
                                "cache.dtype: bfloat16", self.folder)
            self._map[start:start + len(rows)] = rows.numpy().astype(np.float16)
        else:
            self._map[start:start + len(rows)] = rows.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)

    def close(self) -> None:
        if self._map is not None:
            self._map.flush()
            self._map = None

    def finish(self, fingerprint: dict, **info) -> HiddenCache:
        self.close()
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.folder / ARRAY)
        index = {"format": FORMAT, "version": VERSION, "shape": list(self.shape), "dtype": self.dtype,
                 "layers": self.layers, "fingerprint": fingerprint, "complete": True,
                 "written": time.strftime("%Y-%m-%d %H:%M:%S"), **info}
        write_bytes_atomic(self.folder / INDEX, json.dumps(index, indent=1).encode())
        return HiddenCache(self.folder, index)


__all__ = ["HiddenCache", "Writer", "open_cache", "read_index", "FORMAT", "VERSION"]

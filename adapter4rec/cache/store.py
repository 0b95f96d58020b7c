"""The hidden-state cache on disk: one memory-mapped file per (data, backbone) and an index.

Layout of a cache folder::

    hidden.bin   raw [items + 1, layers, hidden] array, float16 or bfloat16 (as 16-bit words);
                 row 0 is padding (zeros), row i is item i of the dataset (1..N)
    index.json   {"format", "version", "shape", "dtype", "layers", "modality", "fingerprint",
                  "checksums", "complete", "build_seconds", ...}
    .lock        the build lock (an empty file, never deleted)

The fingerprint (``fingerprint.py``) says what the rows were computed from; a cache whose
fingerprint differs is stale: it is rebuilt, never used, and the log says what changed.

Concurrency (POSIX: ``fcntl.flock``, which holds on local file systems; without ``fcntl`` there
is no lock): a builder holds an exclusive lock on ``.lock`` from before it looks for a finished
cache until its own is published, so builders of one folder (two sweep jobs, say) take turns, and
one that waited uses the cache the other built when its fingerprint matches (``build.py``). The
kernel drops the lock when its process dies, so a killed build never leaves the folder locked.
Each build writes its own temporary array, ``.hidden.bin.<pid>.<random>.building`` (under DDP rank
0 names it and every rank writes its rows into it); a temporary array left by a build that died is
deleted by the next holder of the lock.

Publishing: the old index is removed, the array renamed into place, the new index written (by
rename), then read back and its fingerprint compared with the one this build computed for. A
reader that finds no complete index, an array of the wrong size, or rows whose checksum differs
treats the folder as absent. The index holds a blake2b digest of each block of ``BLOCK_ROWS``
rows (of the raw bytes); ``open_cache`` reads the file once, block by block, and a mismatch
(same-size damage: a flipped bit, a torn copy) names the block and the cache is rebuilt. A process
that already opened the array keeps reading that inode; one that reopens it (a DataLoader worker)
refuses a file another build has put in its place.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..runtime.io import UMASK, fsync_dir, write_bytes_atomic
from .fingerprint import differences

try:
    import fcntl
except ImportError:  # not POSIX: builds of one folder are not serialised there
    fcntl = None

log = logging.getLogger("adapter4rec")

FORMAT = "adapter4rec-hidden-cache"
VERSION = 2  # 2: per-block checksums in the index
ARRAY = "hidden.bin"
INDEX = "index.json"
LOCK = ".lock"
BLOCK_ROWS = 4096  # rows per checksum block
CHECKSUM = "blake2b-128"
# numpy has no bfloat16: bf16 rows are stored as their 16-bit words and viewed back in torch
NUMPY_DTYPES = {"float16": np.float16, "bfloat16": np.uint16}
FP16_MAX = 65504.0


def load_index(folder: str | Path) -> dict:
    """The folder's index; a DataError saying in one line why there is none that can be used."""
    p = Path(folder) / INDEX
    if not p.is_file():
        raise DataError("no hidden-state cache index here", p)
    try:
        index = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"not valid JSON ({e})", p) from None
    if not isinstance(index, dict):
        raise DataError(f"not a JSON object (a {type(index).__name__})", p)
    if index.get("format") != FORMAT:
        raise DataError(f"not a hidden-state cache index (format {index.get('format')!r})", p)
    return index


def read_index(folder: str | Path) -> dict | None:
    """The folder's index, or None when it is absent or unusable (treated as no cache)."""
    try:
        return load_index(folder)
    except DataError:
        return None


@contextmanager
def lock(folder: str | Path):
    """Hold the folder's exclusive build lock (``flock`` on ``.lock``), waiting for it if another
    build holds it. The lock file is never deleted: a process that unlinked it while another waited
    would let a third lock a new file, and two builds would run at once."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("hidden-state cache %s: another process is building it; waiting for it", folder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def block_digests(f, block_bytes: int) -> list[str]:
    """blake2b of each ``block_bytes`` block of the open binary file ``f`` (from its start), read in
    one streaming pass with one buffer (no memory map: reading the file does not grow the process's
    resident memory)."""
    f.seek(0)
    buf = bytearray(block_bytes)
    view = memoryview(buf)
    out = []
    while n := f.readinto(buf):
        out.append(hashlib.blake2b(view[:n], digest_size=16).hexdigest())
    return out


class HiddenCache:
    """A complete cache folder, opened read-only: ``rows(ids)`` -> tensor [n, layers, hidden].

    The memory map is opened lazily in each process (it is dropped when pickled, e.g. into a
    DataLoader worker started with spawn, and reopened there, refusing a file that another build
    has put in place of the one opened here).
    """

    def __init__(self, folder: str | Path, index: dict | None = None):
        self.folder = Path(folder)
        self.index = index or read_index(self.folder)
        if not self.index or not self.index.get("complete"):
            raise DataError("no complete hidden-state cache here (build it with `adapter4rec cache "
                            "build --config ...`)", self.folder)
        try:
            self.shape = tuple(int(x) for x in self.index["shape"])
            self.dtype = self.index["dtype"]
            self.layers = list(self.index["layers"])
            NUMPY_DTYPES[self.dtype]
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{INDEX} is malformed (shape, dtype or layers)", self.folder) from None
        self._map = None
        self._pid = None
        expected = int(np.prod(self.shape)) * 2
        try:
            st = os.stat(self.folder / ARRAY)
        except FileNotFoundError:
            st = None
        if st is None or st.st_size != expected:
            raise DataError(f"{ARRAY} holds {st.st_size if st else -1} bytes, its index says "
                            f"{expected}: the cache is damaged; delete the folder or rebuild",
                            self.folder)
        self._file_id = (st.st_dev, st.st_ino)  # the array this index was read with

    def __len__(self) -> int:
        return self.shape[0] - 1

    def _open(self):
        f = open(self.folder / ARRAY, "rb")  # noqa: SIM115 (the caller closes it)
        st = os.fstat(f.fileno())
        if (st.st_dev, st.st_ino) != self._file_id:
            f.close()
            raise DataError(f"{ARRAY} was replaced by another build after this run opened the "
                            "cache; restart the run", self.folder)
        return f

    def verify(self) -> None:
        """Check every block of rows against the index's checksums; DataError naming the first
        block that differs."""
        sums = self.index.get("checksums")
        if not isinstance(sums, dict) or sums.get("algorithm") != CHECKSUM:
            raise DataError(f"{INDEX} holds no row checksums", self.folder)
        block_rows = int(sums["block_rows"])
        with self._open() as f:
            got = block_digests(f, block_rows * int(np.prod(self.shape[1:])) * 2)
        want = list(sums.get("blocks", []))
        for b, (g, w) in enumerate(zip(got, want)):
            if g != w:
                lo = b * block_rows
                raise DataError(f"{ARRAY} block {b} (rows {lo}..{min(lo + block_rows, self.shape[0]) - 1}) "
                                "does not match its checksum: the cache is damaged", self.folder)
        if len(got) != len(want):
            raise DataError(f"{ARRAY} has {len(got)} checksum blocks, its index {len(want)}", self.folder)

    @property
    def array(self) -> np.ndarray:
        if self._map is None or self._pid != os.getpid():
            with self._open() as f:
                self._map = np.memmap(f, dtype=NUMPY_DTYPES[self.dtype], mode="r", shape=self.shape)
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


def open_cache(folder: str | Path, fingerprint: dict, verify: bool = True,
               quiet: bool = False) -> HiddenCache | None:
    """The cache in ``folder`` if it is complete, its fingerprint equals ``fingerprint`` and (with
    ``verify``) every block of rows matches its checksum; None otherwise, logging why a cache that
    exists is not used (unless ``quiet``: the second look, under the lock, after a first look that
    logged it)."""
    folder = Path(folder)
    warn = (lambda *a: None) if quiet else log.warning
    try:
        index = load_index(folder)
    except DataError as e:
        if (folder / INDEX).exists():
            warn("hidden-state cache %s: rebuilding", e)
        return None
    if not index.get("complete"):
        warn("hidden-state cache %s is incomplete (an interrupted build): rebuilding", folder)
        return None
    if index.get("version") != VERSION:
        warn("hidden-state cache %s has format version %s (this library writes %s, with row "
             "checksums): rebuilding", folder, index.get("version"), VERSION)
        return None
    old = index.get("fingerprint")
    changed = differences(old, fingerprint) if isinstance(old, dict) else ["fingerprint"]
    if changed:
        warn("hidden-state cache %s is stale (changed: %s): rebuilding", folder, ", ".join(changed))
        return None
    try:
        cache = HiddenCache(folder, index)
        if verify:
            cache.verify()
        return cache
    except DataError as e:
        warn("%s: rebuilding", e)
        return None


class Writer:
    """Writes a cache folder: ``create`` the temporary array, ``write`` row blocks, ``finish``
    (checksums, rename, index). Call ``create`` and ``finish`` holding ``lock(folder)``.

    Several processes (DDP ranks) may write disjoint rows of the same temporary array once it is
    created: rank 0 creates it and the others set ``tmp`` to its name before ``open``.
    """

    def __init__(self, folder: str | Path, n_items: int, layers: list[int], hidden: int,
                 dtype: str = "float16"):
        self.folder = Path(folder)
        self.shape = (n_items + 1, len(layers), hidden)
        self.layers, self.dtype = list(layers), dtype
        self.tmp: Path | None = None
        self._map = None

    def create(self) -> Path:
        """A new temporary array of zeros (row 0 stays padding); returns its path. Temporary
        arrays of builds that died are removed: under the lock no other build is running."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob(f".{ARRAY}.*.building"):
            old.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{ARRAY}.{os.getpid()}.", suffix=".building")
        try:
            os.fchmod(fd, 0o666 & ~UMASK)
            os.ftruncate(fd, int(np.prod(self.shape)) * 2)  # sparse file of zeros
        finally:
            os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

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

    def discard(self) -> None:
        """Remove the temporary array (a build that failed)."""
        self.close()
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)

    def finish(self, fingerprint: dict, **info) -> HiddenCache:
        self.close()
        block_rows = BLOCK_ROWS
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
            # of the bytes on disk, so the rows every rank wrote are covered
            blocks = block_digests(f, block_rows * int(np.prod(self.shape[1:])) * 2)
        # between the rename and the new index no index may describe the new rows
        (self.folder / INDEX).unlink(missing_ok=True)
        os.replace(self.tmp, self.folder / ARRAY)
        fsync_dir(self.folder)
        index = {"format": FORMAT, "version": VERSION, "shape": list(self.shape), "dtype": self.dtype,
                 "layers": self.layers, "fingerprint": fingerprint, "complete": True,
                 "checksums": {"algorithm": CHECKSUM, "block_rows": block_rows, "blocks": blocks},
                 "written": time.strftime("%Y-%m-%d %H:%M:%S"), **info}
        write_bytes_atomic(self.folder / INDEX, json.dumps(index, indent=1).encode())
        # read back what was published: only rows of the fingerprint built for are marked valid
        # (the lock makes this hold; the check catches a file system where the lock does not)
        published = read_index(self.folder) or {}
        old = published.get("fingerprint")
        if (not isinstance(old, dict) or differences(old, fingerprint)
                or published.get("checksums") != index["checksums"]):
            raise DataError("another build replaced this cache while it was being published (is "
                            "the folder on a file system without flock?); run again", self.folder)
        return HiddenCache(self.folder, published)


__all__ = ["FORMAT", "VERSION", "HiddenCache", "Writer", "block_digests", "load_index", "lock",
           "open_cache", "read_index"]

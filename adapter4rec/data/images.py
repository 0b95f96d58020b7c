"""Image items: the LMDB image store and decoding.

Store layout (an LMDB environment, a folder holding ``data.mdb``; written by ``data.lmdb``):
- key = the item id in UTF-8, value = the image file's bytes exactly as stored on disk (JPEG, PNG,
  ...): no pickled Python objects, so the store does not depend on any class of this library;
- key ``__meta__`` = a small JSON object: ``{"format": "adapter4rec-images", "version": 1,
  "count": N, "formats": {"JPEG": n, ...}}``.

Reading: ``ImageStore`` opens the environment lazily, on first use *in the current process* (it keeps
the pid and reopens after a fork), read-only and without a lock file, so it can be pickled into and
used from any number of DataLoader workers. ``ImageContent`` is the content store of image items:
``get(ids)`` decodes and resizes with PIL in the calling process (a DataLoader worker during
training) and returns ``{"pixels": uint8 [n, 3, S, S]}``; float conversion and normalisation
happen on the device, in the item encoder. Nothing is cached.
"""
from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError

log = logging.getLogger("adapter4rec")

META_KEY = b"__meta__"
STORE_FORMAT = "adapter4rec-images"
BLANK_VALUE = 255  # pixel value of the all-white image used for items without one (missing: blank)
_SHOWN = 5         # ids listed in error messages


def lmdb_module():
    try:
        import lmdb
    except ImportError:  # pragma: no cover - lmdb is a dependency
        raise ConfigError("image items need the 'lmdb' package: pip install lmdb") from None
    return lmdb


def listing(ids, n=_SHOWN) -> str:
    """The first ``n`` of ``ids`` for an error message, and how many more there are."""
    ids = list(ids)
    shown = ", ".join(repr(i) for i in ids[:n])
    return shown + (f", ... ({len(ids) - n} more)" if len(ids) > n else "")


# ---------------------------------------------------------------------------------------- reading


# Environments open in this process, by resolved store path: LMDB allows one handle per file and
# process (py-lmdb refuses a second), so every ImageStore of one path shares it. An entry inherited
# through fork carries the parent's pid and is closed (in the child only) and reopened before use.
_OPEN: dict[str, tuple[int, object]] = {}


class ImageStore:
    """Read-only access to an LMDB image store; safe to pickle and to use after ``fork``.

    The environment is opened on first use in each process (``readonly=True, lock=False,
    readahead=False``) and never in ``__init__``, so a DataLoader forks no open handle; a handle
    inherited through ``fork`` is detected by its pid and replaced. The object itself holds no
    handle (see ``_OPEN``), so pickling it is trivial.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError("image store does not exist; build it with `adapter4rec build-lmdb "
                            "--images DIR --items items.tsv --out X.lmdb`", self.path)
        self._key = str(self.path.resolve())

    def _open(self):
        lmdb = lmdb_module()
        try:
            return lmdb.open(str(self.path), subdir=self.path.is_dir(), readonly=True, lock=False,
                             readahead=False, meminit=False, max_readers=512)
        except lmdb.Error as e:
            raise DataError(f"cannot open as an LMDB store ({e}); build it with "
                            "`adapter4rec build-lmdb`", self.path) from None

    @property
    def env(self):
        pid = os.getpid()
        entry = _OPEN.get(self._key)
        if entry is not None and entry[0] == pid:
            return entry[1]
        if entry is not None:  # inherited from the parent process: never used here, only closed
            _OPEN.pop(self._key)
            entry[1].close()  # lock=False: this unmaps the child's copy and touches nothing shared
        env = self._open()
        _OPEN[self._key] = (pid, env)
        return env

    def is_open(self) -> bool:
        """Open in this process (a forked child's inherited handle does not count)."""
        entry = _OPEN.get(self._key)
        return entry is not None and entry[0] == os.getpid()

    def close(self) -> None:
        """Close this process's handle (every ImageStore of the path reopens it when next used)."""
        entry = _OPEN.pop(self._key, None)
        if entry is not None:
            entry[1].close()

    def get(self, item_id: str) -> bytes | None:
        with self.env.begin() as txn:
            return txn.get(item_id.encode("utf-8"))

    def get_many(self, item_ids) -> list[bytes | None]:
        with self.env.begin() as txn:
            return [txn.get(i.encode("utf-8")) for i in item_ids]

    def meta(self) -> dict:
        raw = self.get(META_KEY.decode())
        if raw is None:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            return {}

    def missing(self, item_ids) -> list[str]:
        """The ids among ``item_ids`` with no entry in the store (one lookup each, no value read)."""
        with self.env.begin(buffers=True) as txn:  # buffers: look the key up without copying the value
            return [i for i in item_ids if txn.get(i.encode("utf-8")) is None]

    def keys(self) -> list[str]:
        with self.env.begin() as txn:
            return [k.decode("utf-8") for k in txn.cursor().iternext(keys=True, values=False)
                    if k != META_KEY]

    def check_format(self) -> dict:
        """The store's metadata; a clear error for a store this library did not write."""
        meta = self.meta()
        if meta.get("format") == STORE_FORMAT:
            return meta
        if self.get("__keys__") is not None or self.get("__len__") is not None:
            raise DataError("this is an LMDB store of the reference implementation (pickled "
                            "LMDB_Image objects keyed by number), which this library does not read; "
                            "rebuild it from the image files with `adapter4rec build-lmdb`", self.path)
        log.warning("%s has no %s key: not written by adapter4rec build-lmdb; reading its values "
                    "as image file bytes keyed by item id", self.path, META_KEY.decode())
        return meta


def decode_image(data: bytes, size: int, resample: int = 2) -> np.ndarray:
    """Image file bytes -> uint8 RGB array [3, size, size] (resized with PIL, aspect not kept, as
    the Hugging Face ViT image processors do). Raises PIL's errors for bytes that are no image."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if im.format == "JPEG":
            im.draft("RGB", (size, size))  # let the JPEG decoder downscale by 1/2..1/8 first
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), resample=resample)
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


class ImageContent:
    """Content store of image items: item ``i`` (1..N) is ``item_ids[i - 1]`` in the LMDB store.

    ``get(ids)`` returns ``{"pixels": uint8 tensor [n, 3, size, size]}``, decoded in the calling
    process (a DataLoader worker during training). Picklable; holds no open handle until used.
    """

    def __init__(self, store: ImageStore | str | Path, item_ids: list[str], size: int,
                 missing: str = "error", resample: int = 2, check: bool = True):
        if missing not in ("error", "blank"):
            raise ConfigError(f"data.missing_image must be 'error' or 'blank', got {missing!r}")
        if size < 1:
            raise ConfigError(f"image size must be positive, got {size}")
        self.store = store if isinstance(store, ImageStore) else ImageStore(store)
        self.item_ids, self.size, self.resample = list(item_ids), int(size), int(resample)
        self.missing_policy = missing
        self.absent: frozenset[str] = frozenset()
        if check:
            self.check()

    def check(self) -> None:
        """Every item has an image (else a DataError listing them, or a logged count with
        ``missing="blank"``). Opens the store in this process only for the check, then closes it."""
        try:
            self.store.check_format()
            absent = self.store.missing(self.item_ids)
        finally:
            self.store.close()  # no handle is left open to be inherited by forked workers
        if absent and self.missing_policy == "error":
            raise DataError(f"{len(absent)} of {len(self.item_ids)} items have no image in the store "
                            f"(first: {listing(absent)}); add them with `adapter4rec build-lmdb`, or "
                            "set data.missing_image: blank to use a blank image for them",
                            self.store.path)
        if absent:
            log.warning("%d of %d items have no image in %s: a blank image stands in for them "
                        "(data.missing_image: blank); first: %s", len(absent), len(self.item_ids),
                        self.store.path, listing(absent))
        self.absent = frozenset(absent)

    def __len__(self) -> int:
        return len(self.item_ids)

    def get(self, ids: np.ndarray) -> dict[str, torch.Tensor]:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        n = len(self.item_ids)
        if len(ids) and (ids.min() < 1 or ids.max() > n):
            bad = ids[(ids < 1) | (ids > n)]
            raise DataError(f"item index {int(bad[0])} is outside 1..{n} (the items of this dataset); "
                            "0 is padding and is never encoded", self.store.path)
        keys = [self.item_ids[i - 1] for i in ids]
        out = np.full((len(ids), 3, self.size, self.size), BLANK_VALUE, dtype=np.uint8)
        for j, (key, data) in enumerate(zip(keys, self.store.get_many(keys))):
            if data is None:
                if key in self.absent:  # allowed by missing_image: blank
                    continue
                raise DataError(f"item {key!r} has no image in the store (the store changed since the "
                                "dataset was built?)", self.store.path)
            try:
                out[j] = decode_image(data, self.size, self.resample)
            except Exception as e:  # PIL raises several types for corrupt data
                raise DataError(f"the image of item {key!r} cannot be decoded ({type(e).__name__}: "
                                f"{e}); rebuild the store from valid image files with "
                                "`adapter4rec build-lmdb`", self.store.path) from None
        return {"pixels": torch.from_numpy(out)}

"""The LMDB image store's builder (``adapter4rec build-lmdb``): one image file per item id, packed
with its bytes unchanged (see ``data.images`` for the layout)."""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
from pathlib import Path

from ..errors import DataError
from .images import _OPEN, META_KEY, STORE_FORMAT, _SHOWN, listing, lmdb_module
from .readers import read_items

log = logging.getLogger("adapter4rec")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


def index_images(images_dir: str | Path) -> dict[str, Path]:
    """``{file stem: path}`` for every image file under ``images_dir`` (searched recursively, so
    the H&M layout ``images/010/0108775015.jpg`` works as well as a flat folder)."""
    root = Path(images_dir)
    if not root.is_dir():
        raise DataError("not a folder; --images must name the folder holding the image files", root)
    found: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
            if p.stem in found:
                raise DataError(f"two image files for item {p.stem!r}: {found[p.stem]} and {p}; "
                                "keep one image per item id", root)
            found[p.stem] = p
    return found


def build_lmdb(images_dir: str | Path, items_file: str | Path, out: str | Path,
               allow_missing: bool = False, overwrite: bool = False, verify: bool = True,
               progress: bool = True, commit_every: int = 1000) -> dict:
    """Pack one image per item id of ``items_file`` from ``images_dir`` into the LMDB store ``out``.

    The image of item ``X`` is the file whose name without extension is ``X`` (any of
    ``IMAGE_EXTENSIONS``, anywhere below ``images_dir``). Its bytes are stored unchanged. Items
    without an image file are an error listing them, or with ``allow_missing`` are left out and
    counted (train with ``data.missing_image: blank`` then). ``verify`` checks that each file is an
    image PIL can read (header and checksum, without a full decode). The store is written to a
    temporary folder beside ``out`` and renamed at the end, so an interrupted build leaves no
    half-written store. Returns a summary dict.
    """
    from PIL import Image, UnidentifiedImageError
    from tqdm.auto import tqdm

    lmdb = lmdb_module()
    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError("already exists; pass --overwrite to replace it, or choose another --out", out)
    item_ids = list(read_items(items_file))
    if META_KEY.decode() in item_ids:
        raise DataError(f"item id {META_KEY.decode()!r} is reserved for the store's metadata; "
                        "rename that item", items_file)
    files = index_images(images_dir)
    missing = [i for i in item_ids if i not in files]
    if missing and not allow_missing:
        raise DataError(f"{len(missing)} of {len(item_ids)} items have no image file under "
                        f"{images_dir} (first: {listing(missing)}); an item's image must be named "
                        "<item id>.jpg (or .png, ...); pass --allow-missing to build without them "
                        "and train with data.missing_image: blank", items_file)
    present = [i for i in item_ids if i in files]
    total = sum(files[i].stat().st_size for i in present)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    formats: dict[str, int] = {}
    try:
        # map_size only reserves address space; the file grows with the data.
        env = lmdb.open(str(tmp), map_size=max(2 * total + (64 << 20), 1 << 26), subdir=True,
                        meminit=False)
        try:
            txn = env.begin(write=True)
            for n, item_id in enumerate(tqdm(present, desc="build-lmdb", unit="img",
                                             disable=not progress), 1):
                path = files[item_id]
                data = path.read_bytes()
                try:
                    with Image.open(io.BytesIO(data)) as im:
                        fmt = im.format or "unknown"
                        if verify:
                            im.verify()
                except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                    # PIL refuses the size from the header alone (the warning counts when warnings
                    # are errors); the training reader would refuse the image too.
                    raise DataError(f"refused as a possible decompression bomb ({e}); resize the "
                                    "image or remove the file", path) from None
                except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                    raise DataError(f"not a readable image ({e}); replace or remove the file", path) from None
                formats[fmt] = formats.get(fmt, 0) + 1
                txn.put(item_id.encode("utf-8"), data)
                if n % commit_every == 0:
                    txn.commit()
                    txn = env.begin(write=True)
            meta = {"format": STORE_FORMAT, "version": 1, "count": len(present), "formats": formats}
            txn.put(META_KEY, json.dumps(meta).encode("utf-8"))
            txn.commit()
            env.sync(True)
        finally:
            env.close()
        if out.exists():
            entry = _OPEN.pop(str(out.resolve()), None)  # a reader of the old store in this process
            if entry is not None and entry[0] == os.getpid():
                entry[1].close()
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if missing:
        log.warning("build-lmdb: %d of %d items have no image and were left out (first: %s)",
                    len(missing), len(item_ids), listing(missing))
    summary = {"out": str(out), "count": len(present), "missing": len(missing),
               "missing_ids": missing[:_SHOWN], "bytes": total, "formats": formats}
    log.info("build-lmdb: wrote %d images (%.1f MiB) to %s", len(present), total / 2**20, out)
    return summary

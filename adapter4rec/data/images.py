"""Image items: the LMDB image store, its builder (`adapter4rec build-lmdb`), and synthetic images.

Store layout (an LMDB environment, a folder holding ``data.mdb``):
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

Synthetic images: ``make_image_domain`` / ``make_image_transfer_pair`` write the synthetic text
domains of ``adapter4rec.data.synthetic`` plus one small image per item whose shape and colour
follow the item's latent topic, and pack them with the builder, so the image path runs end to end
on CPU. ``write_tiny_vit`` writes a small random-weight ViT or ViT-MAE folder for tests and demos.
"""
from __future__ import annotations

import io
import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .readers import read_items

log = logging.getLogger("adapter4rec")

META_KEY = b"__meta__"
STORE_FORMAT = "adapter4rec-images"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
BLANK_VALUE = 255  # pixel value of the all-white image used for items without one (missing: blank)
_SHOWN = 5         # ids listed in error messages


def _lmdb():
    try:
        import lmdb
    except ImportError:  # pragma: no cover - lmdb is a dependency
        raise ConfigError("image items need the 'lmdb' package: pip install lmdb") from None
    return lmdb


def _listing(ids, n=_SHOWN) -> str:
    ids = list(ids)
    shown = ", ".join(repr(i) for i in ids[:n])
    return shown + (f", ... ({len(ids) - n} more)" if len(ids) > n else "")


# --------------------------------------------------------------------------------------- building


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

    lmdb = _lmdb()
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
                        f"{images_dir} (first: {_listing(missing)}); an item's image must be named "
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
                    len(missing), len(item_ids), _listing(missing))
    summary = {"out": str(out), "count": len(present), "missing": len(missing),
               "missing_ids": missing[:_SHOWN], "bytes": total, "formats": formats}
    log.info("build-lmdb: wrote %d images (%.1f MiB) to %s", len(present), total / 2**20, out)
    return summary


def add_build_lmdb_parser(subparsers) -> None:
    """The `adapter4rec build-lmdb` subcommand."""
    p = subparsers.add_parser(
        "build-lmdb", help="pack one image file per item id into an LMDB image store",
        description="Pack the image of every item of ITEMS (file DIR/**/<item id>.jpg|.png|...) "
                    "into an LMDB store: key = item id, value = the file's bytes.")
    p.add_argument("--images", required=True, metavar="DIR", help="folder of image files (searched recursively)")
    p.add_argument("--items", required=True, metavar="ITEMS", help="items file (item id in the first column)")
    p.add_argument("--out", required=True, metavar="X.lmdb", help="store to write (a folder)")
    p.add_argument("--allow-missing", action="store_true",
                   help="leave out items without an image (then train with data.missing_image: blank)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--no-verify", action="store_true", help="skip checking that each file is an image")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=build_lmdb_main)


def build_lmdb_main(args) -> None:
    if not logging.getLogger().handlers and not log.handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.setLevel(logging.INFO)
    s = build_lmdb(args.images, args.items, args.out, allow_missing=args.allow_missing,
                   overwrite=args.overwrite, verify=not args.no_verify, progress=not args.no_progress)
    print(f"wrote {s['count']} images ({s['bytes'] / 2**20:.1f} MiB; "
          f"{', '.join(f'{k} {v}' for k, v in sorted(s['formats'].items()))}) to {s['out']}"
          + (f"; {s['missing']} items without an image left out" if s["missing"] else ""))


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
        lmdb = _lmdb()
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
                            f"(first: {_listing(absent)}); add them with `adapter4rec build-lmdb`, or "
                            "set data.missing_image: blank to use a blank image for them",
                            self.store.path)
        if absent:
            log.warning("%d of %d items have no image in %s: a blank image stands in for them "
                        "(data.missing_image: blank); first: %s", len(absent), len(self.item_ids),
                        self.store.path, _listing(absent))
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


# -------------------------------------------------------------------------------------- synthetic

_SHAPES = ("disc", "square", "triangle", "cross", "bars")
_COLOURS = ((220, 40, 40), (40, 150, 60), (40, 80, 220), (230, 170, 20))


def topic_look(topic: str) -> tuple[str, tuple[int, int, int]]:
    """Shape and colour of a topic's items: each of the 20 topics has its own pair, the same in
    every domain (so what is learned about a look on the source transfers to the target)."""
    from .synthetic import TOPICS

    k = list(TOPICS).index(topic)
    return _SHAPES[k % len(_SHAPES)], _COLOURS[k // len(_SHAPES) % len(_COLOURS)]


def draw_item_image(topic: str, rng: random.Random, size: int = 32):
    """A PIL image: the topic's shape in the topic's colour on a light background, with per-item
    variation (position, scale, shade, background tint and a small accent dot)."""
    from PIL import Image, ImageDraw

    shape, colour = topic_look(topic)
    bg = tuple(rng.randint(205, 250) for _ in range(3))
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    r = size * rng.uniform(0.28, 0.4)
    cx, cy = size / 2 + rng.uniform(-0.1, 0.1) * size, size / 2 + rng.uniform(-0.1, 0.1) * size
    shade = rng.uniform(0.8, 1.1)
    fill = tuple(min(255, int(c * shade)) for c in colour)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "disc":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "cross":
        w = r / 2.5
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
    else:  # bars
        for k in range(3):
            y = cy - r + k * r * 0.8
            d.rectangle((cx - r, y, cx + r, y + r * 0.4), fill=fill)
    a = size * 0.08
    ax, ay = rng.uniform(a, size - a), rng.uniform(a, size - a)
    d.ellipse((ax - a, ay - a, ax + a, ay + a), fill=tuple(rng.randint(0, 255) for _ in range(3)))
    return im


def write_item_images(out_dir: str | Path, item_topics: dict[str, str], size: int = 32,
                      seed: int = 0, fmt: str = "png") -> Path:
    """One image file ``out_dir/<item id>.<fmt>`` per item; returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ext = {"png": "png", "jpeg": "jpg", "jpg": "jpg"}[fmt.lower()]
    for item_id, topic in item_topics.items():
        rng = random.Random(f"adapter4rec-image-{seed}-{item_id}")
        im = draw_item_image(topic, rng, size)
        if ext == "jpg":
            im.save(out / f"{item_id}.jpg", format="JPEG", quality=90)
        else:
            im.save(out / f"{item_id}.png", format="PNG")
    return out


def make_image_domain(out_dir, domain="source", n_users=1000, n_items=400, seed=0, min_len=5,
                      max_len=20, image_size=32, fmt="png", keep_titles=False) -> dict:
    """A synthetic domain for image items: ``users.tsv``, ``items.tsv`` (one column unless
    ``keep_titles``), ``images/<id>.png`` and the packed store ``images.lmdb``.

    Returns ``make_domain``'s summary plus ``images`` (the store's path)."""
    from .synthetic import make_domain

    out = Path(out_dir)
    summary = make_domain(out, domain, n_users, n_items, seed, min_len, max_len)
    if not keep_titles:  # the H&M / Amazon image layout: item ids only
        items = list(read_items(out / "items.tsv"))
        (out / "items.tsv").write_text("".join(f"{i}\n" for i in items), encoding="utf-8")
    write_item_images(out / "images", summary["item_topics"], image_size, seed, fmt)
    build_lmdb(out / "images", out / "items.tsv", out / "images.lmdb", overwrite=True, progress=False)
    summary["images"] = str(out / "images.lmdb")
    return summary


def make_image_transfer_pair(root, seed=0, source_users=1000, source_items=400, target_users=600,
                             target_items=300, image_size=32, min_len=5, max_len=20):
    """``root/source`` and ``root/target`` with images; returns their paths."""
    root = Path(root)
    make_image_domain(root / "source", "source", source_users, source_items, seed, min_len, max_len,
                      image_size)
    make_image_domain(root / "target", "target", target_users, target_items, seed, min_len, max_len,
                      image_size)
    return root / "source", root / "target"


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def write_tiny_vit(out_dir, kind: str = "vit", image_size: int = 32, patch_size: int = 8,
                   hidden_size: int = 32, num_layers: int = 2, num_heads: int = 2,
                   intermediate_size: int = 64, seed: int = 0) -> str:
    """Write a small random-weight ``ViTModel`` (kind ``vit``) or ``ViTMAEModel`` (``mae``) folder
    with a ``preprocessor_config.json`` like the real models' (0.5 mean/std for ViT, ImageNet
    mean/std for MAE); returns its path. Loads offline like pretrained_models/vit-base-patch16-224."""
    from transformers import ViTConfig, ViTMAEConfig, ViTMAEModel, ViTModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # as load_backbone: no "Writing model shards" bar

    if kind not in ("vit", "mae"):
        raise ConfigError(f"kind must be 'vit' or 'mae', got {kind!r}")
    common = dict(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                  num_hidden_layers=num_layers, num_attention_heads=num_heads,
                  intermediate_size=intermediate_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        if kind == "vit":
            model = ViTModel(ViTConfig(**common), add_pooling_layer=False)
            mean, std = [0.5] * 3, [0.5] * 3
        else:
            model = ViTMAEModel(ViTMAEConfig(**common, mask_ratio=0.75))
            mean, std = IMAGENET_MEAN, IMAGENET_STD
    model.save_pretrained(out)
    pre = {"do_normalize": True, "do_resize": True, "image_mean": mean, "image_std": std,
           "resample": 2, "size": image_size}
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2), encoding="utf-8")
    return str(out)

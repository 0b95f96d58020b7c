"""Hidden-state cache: one frozen-backbone pass over all items, then training and evaluation that
never run the backbone.

A decoupled method (``peft.method: iisan``) reads only the frozen backbone's per-layer pooled
states, which no trainable parameter influences; so do ``frozen`` runs (the pooled last layer) when
``cache.frozen`` is set. ``attach`` (called by the trainer right after ``peft.apply``) computes the
fingerprint of what the states would be computed from, opens the matching cache or builds it (a
progress bar; under DDP every rank encodes its shard), frees the backbone's weights
(``cache.release_backbone``) and returns the content store the run uses instead of tokens/pixels:
``CachedContent.get(ids)`` -> ``{"hidden": [n, layers, hidden]}`` (``hidden_text`` /
``hidden_image`` for two modalities), 16-bit, straight from the memory map.

    adapter4rec cache build --config configs/adapt/iisan.yaml     # ahead of training (optional)
    adapter4rec cache info ~/.cache/adapter4rec/<folder>

Where: ``cache.dir``, else ``$ADAPTER4REC_CACHE``, else ``~/.cache/adapter4rec``; one folder per
(data, backbone, modality), see ``store.py`` for the format and the fingerprint.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.dataset import item_loader
from ..errors import ConfigError
from .store import (TORCH_DTYPES, HiddenCache, Writer, differences, digest, module_digest,
                    open_cache, read_index)

log = logging.getLogger("adapter4rec")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                   "merges.txt", "special_tokens_map.json", "spiece.model")


class CachedContent:
    """The content store of a cached run: item ids -> cached per-layer states (never tokens)."""

    def __init__(self, caches: dict[str, HiddenCache], layers: dict[str, list[int]], stores: dict):
        self.caches, self.layers = caches, layers
        self.stores = stores  # the tokens / pixels stores the states were computed from
        sizes = {len(c) for c in caches.values()}
        if len(sizes) != 1:
            raise ConfigError(f"hidden-state caches of different item counts: {sizes}")

    def __len__(self) -> int:
        return len(next(iter(self.caches.values())))

    def get(self, ids: np.ndarray) -> dict[str, torch.Tensor]:
        if len(self.caches) == 1:
            (m, c), = self.caches.items()
            return {"hidden": c.rows(ids, self.layers[m])}
        return {f"hidden_{m}": c.rows(ids, self.layers[m]) for m, c in self.caches.items()}


# ------------------------------------------------------------------------------------ what to cache

def reads(cfg, model) -> dict[str, list[int]] | None:
    """{modality: layers} the run's method reads from the cache, or None (no cache for this run)."""
    from ..peft.iisan import LAST, modal_encoders, side_network

    side = side_network(model)
    if side is not None:
        return {m: list(v) for m, v in side.layers.items()} if cfg.cache.enabled else None
    if cfg.peft.method == "frozen" and cfg.cache.frozen and cfg.cache.enabled:
        enc = model.item_encoder
        if getattr(enc, "backbone", None) is None or getattr(enc, "project", None) is None:
            raise ConfigError("cache.frozen: the frozen item encoder must be a text or image backbone")
        return {m: [LAST] for m in modal_encoders(enc)}
    return None


def modal_contents(content, modalities) -> dict:
    stores = getattr(content, "stores", None)
    if stores is not None:
        return {m: stores[m] for m in modalities}
    (m,) = modalities
    return {m: content}


def _device() -> torch.device:
    from ..training import distributed as dist

    return dist.setup()


def cache_root(cfg) -> Path:
    if cfg.cache.dir:
        return Path(cfg.cache.dir).expanduser()
    if os.environ.get("ADAPTER4REC_CACHE"):
        return Path(os.environ["ADAPTER4REC_CACHE"]).expanduser()
    return Path.home() / ".cache" / "adapter4rec"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:40] or "x"


def backbone_path(cfg, modality: str) -> str:
    m = cfg.model
    return m.image_pretrained if modality == "image" and m.item_encoder == "text+image" else m.pretrained


def cache_folder(cfg, modality: str, layers: list[int] | None = None) -> Path:
    """One folder per (data, backbone, modality, source checkpoint, layers read); what is in it is
    checked by the fingerprint: when title length, pooling, weights or items change it is rebuilt.
    (The layers are in the name so that iisan and a cached frozen run do not evict each other.)"""
    d = cfg.data
    model_dir = backbone_path(cfg, modality)
    key = digest(Path(d.path).resolve(), d.users_file, d.items_file, d.min_seq_len, d.max_seq_len,
                 d.with_abstract, Path(model_dir).resolve(), cfg.model.random_init, modality,
                 Path(cfg.train.init_from).resolve() if cfg.train.init_from else "",
                 "" if layers is None else layers)
    name = f"{_slug(Path(d.path).resolve().name)}-{_slug(Path(model_dir).name)}-{modality}-{key[:10]}"
    return cache_root(cfg) / name


def content_fingerprint(store, model_dir: str) -> dict:
    """What the items' content is: for text the token matrix (items, order, titles, tokenizer and
    max_title_len in one hash); for images the store file's identity and the image size."""
    tokens = getattr(store, "tokens", None)
    if tokens is not None:
        tok_files = [(f, digest((Path(model_dir) / f).read_bytes())) for f in TOKENIZER_FILES
                     if (Path(model_dir) / f).is_file()]
        return {"kind": "text", "items": len(tokens) - 1, "max_title_len": int(tokens.shape[1]),
                "tokens": digest(tokens), "pad_id": int(store.pad_id), "tokenizer": digest(tok_files)}
    item_ids = getattr(store, "item_ids", None)
    path = getattr(getattr(store, "store", None), "path", None)
    if item_ids is None or path is None:
        raise ConfigError(f"the hidden-state cache cannot fingerprint a {type(store).__name__} store")
    data_file = Path(path) / "data.mdb" if Path(path).is_dir() else Path(path)
    st = data_file.stat()
    return {"kind": "image", "items": len(item_ids), "item_ids": digest("\n".join(item_ids)),
            "store": str(Path(path).resolve()), "store_bytes": st.st_size, "store_mtime_ns": st.st_mtime_ns,
            "size": int(store.size), "resample": int(getattr(store, "resample", 2)),
            "blank": digest(sorted(getattr(store, "absent", ())))}


def fingerprint(encoder, store, layers: list[int], model_dir: str, dtype: str, amp) -> dict:
    backbone = encoder.backbone
    config = {k: v for k, v in backbone.config.to_diff_dict().items() if k != "transformers_version"}
    return {"backbone": {"model_type": backbone.config.model_type,
                         "config": digest(json.dumps(config, sort_keys=True, default=str)),
                         "weights": module_digest(backbone)},
            "content": content_fingerprint(store, model_dir),
            "pooling": encoder.pooling, "layers": list(layers), "dtype": dtype,
            "precision": "bf16" if amp == torch.bfloat16 else "fp32"}


# ------------------------------------------------------------------------------------------- build

def build_cache(encoder, store, folder: str | Path, layers: list[int], fingerprint: dict,
                dtype: str = "float16", batch_size: int = 256, device=None, amp=None,
                progress: bool = True, num_workers: int = 0, desc: str = "cache") -> HiddenCache:
    """Encode every item of ``store`` once with the frozen ``encoder`` and write the pooled states of
    ``layers`` to ``folder`` (see ``store.py``). Under DDP each rank encodes a contiguous shard."""
    from ..peft.iisan import layer_states
    from ..training import distributed as dist

    device = device or torch.device("cpu")
    n = len(store)
    hidden = encoder.backbone.config.hidden_size
    writer = Writer(folder, n, layers, hidden, dtype)
    if dist.is_main():
        writer.create()
    dist.barrier()
    writer.open()
    lo, hi = dist.shard_range(n, dist.rank(), dist.world())
    ids = np.arange(lo + 1, hi + 1)
    loader = item_loader(store, ids, batch_size, num_workers, pin_memory=device.type == "cuda")
    was = next(encoder.parameters()).device
    encoder.to(device)
    t0 = time.time()
    with tqdm(total=len(ids), desc=desc, unit="item", disable=not (progress and dist.is_main()),
              leave=False) as bar:
        for start, content in loader:
            content = {k: v.to(device, non_blocking=True) for k, v in content.items()}
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                states = layer_states(encoder, content, layers)
            writer.write(start, states)
            bar.update(len(states))
    writer.close()
    encoder.to(was)
    dist.barrier()
    seconds = dist.all_reduce_sum(torch.tensor([time.time() - t0], device=device)).max().item()
    cache = None
    if dist.is_main():
        cache = writer.finish(fingerprint, build_seconds=round(seconds, 3), items=n,
                              device=str(device), ranks=dist.world())
    dist.barrier()
    cache = cache or HiddenCache(folder)
    log.info("hidden-state cache %s: built [%d, %d, %d] %s in %.1f s (%.0f items/s)", folder,
             *cache.shape, dtype, seconds, n / max(seconds, 1e-9))
    return cache


def release_backbone(encoder) -> int:
    """Free the weights of a frozen backbone whose states come from the cache; returns the bytes
    freed. Parameter names stay (an adapter file's tower signature is unchanged); running the
    backbone afterwards raises a clear error."""
    freed = 0
    for module in encoder.backbone.modules():
        for store in (module._parameters, module._buffers):
            for name, t in store.items():
                if t is not None and t.numel():
                    freed += t.numel() * t.element_size()
                    t.data = torch.empty(0, dtype=t.dtype, device=t.device)
    encoder.backbone_released = True
    return freed


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc keeps it otherwise), so the process's resident
    memory reflects what training needs."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def attach(cfg, model, data, content, device=None):
    """The content store of this run: ``content`` itself, or a ``CachedContent`` when the run's
    method reads hidden states (opened, or built on first use)."""
    from ..peft.iisan import modal_encoders
    from ..training import distributed as dist
    from ..training.trainer import amp_dtype

    layers = reads(cfg, model)
    if not layers:
        return content
    device = device or _device()
    encoders = modal_encoders(model.item_encoder)
    stores = modal_contents(content, list(layers))
    amp = amp_dtype(cfg, device)
    caches = {}
    for m, lay in layers.items():
        enc, store, model_dir = encoders[m], stores[m], backbone_path(cfg, m)
        if getattr(enc, "backbone_released", False):
            raise ConfigError("the backbone was already released: attach the cache once per model")
        fp = fingerprint(enc, store, lay, model_dir, cfg.cache.dtype, amp)
        folder = cache_folder(cfg, m, lay)
        if cfg.cache.rebuild and dist.is_main() and (folder / "index.json").exists():
            (folder / "index.json").unlink()
        dist.barrier()
        cache = dist.broadcast_object(open_cache(folder, fp) is not None)
        cache = open_cache(folder, fp) if cache else None
        if cache is None:
            cache = build_cache(enc, store, folder, lay, fp, cfg.cache.dtype, cfg.cache.batch_size,
                                device, amp, cfg.train.progress, cfg.train.num_workers,
                                desc=f"caching {m} hidden states")
        else:
            log.info("hidden-state cache %s: [%d, %d, %d] %s, written %s", folder, *cache.shape,
                     cache.dtype, cache.index.get("written", "?"))
        caches[m] = cache
    if cfg.cache.release_backbone:
        freed = sum(release_backbone(encoders[m]) for m in layers)
        _trim_heap()
        log.info("item content comes from the hidden-state cache: the backbone will not run in "
                 "training or evaluation (%.0f MB of backbone weights released)", freed / 2**20)
    else:
        log.info("item content comes from the hidden-state cache: the backbone will not run in "
                 "training or evaluation")
    return CachedContent(caches, layers, stores)


# --------------------------------------------------------------------------------------------- CLI

def add_cache_parser(subparsers) -> None:
    c = subparsers.add_parser("cache", help="build or inspect the hidden-state cache (peft.method iisan)")
    sub = c.add_subparsers(dest="cache_command", required=True)
    b = sub.add_parser("build", help="encode every item once with the frozen backbone (as a run would)")
    b.add_argument("--config", help="experiment YAML (the run's config)")
    b.add_argument("--set", action="append", default=[], metavar="a.b=value")
    b.add_argument("--rebuild", action="store_true", help="rebuild even if a matching cache exists")
    b.set_defaults(func=_build_main)
    i = sub.add_parser("info", help="print a cache folder's index (shape, layers, fingerprint)")
    i.add_argument("folder")
    i.set_defaults(func=_info_main)


def _build_main(args) -> None:
    from ..config import load_config
    from ..training.trainer import load_data, prepare, setup_logging

    cfg = load_config(args.config, args.set)
    cfg.train.progress = True
    setup_logging()
    if cfg.peft.method != "iisan" and not (cfg.peft.method == "frozen" and cfg.cache.frozen):
        raise ConfigError(f"peft.method {cfg.peft.method!r} reads no cached hidden states (iisan does; "
                          "frozen does with cache.frozen: true)")
    if not cfg.cache.enabled:
        raise ConfigError("cache.enabled is false in this config")
    cfg.cache.rebuild = args.rebuild or cfg.cache.rebuild
    _, _, content, _ = prepare(cfg, load_data(cfg))
    for m, c in content.caches.items():
        print(f"{m}: {c.folder} {list(c.shape)} {c.dtype} layers {c.layers}")


def _info_main(args) -> None:
    index = read_index(args.folder)
    if index is None:
        raise ConfigError(f"{args.folder} holds no hidden-state cache index")
    print(json.dumps(index, indent=2))


__all__ = ["CachedContent", "HiddenCache", "attach", "build_cache", "fingerprint", "cache_folder",
           "cache_root", "reads", "release_backbone", "open_cache", "read_index", "differences",
           "add_cache_parser", "TORCH_DTYPES"]

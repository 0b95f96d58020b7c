"""Building and attaching the hidden-state cache.

``attach`` (called by ``pipeline.prepare`` right after ``peft.apply``) computes the fingerprint of
what the states would be computed from, opens the matching cache or builds it (a progress bar;
under DDP every rank encodes its shard), frees the backbone's weights (``cache.release_backbone``)
and returns the content store the run uses instead of tokens/pixels.

Two processes that attach the same missing cache at once (two sweep jobs on one machine) take
turns on the folder's lock (``store.lock``): the second waits, finds the cache the first built,
checks its fingerprint and rows, and uses it.
"""
from __future__ import annotations

import ctypes
import logging
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.batching import item_loader
from ..errors import ConfigError, DataError
from ..peft.iisan import LAST, layer_states, modal_encoders, side_network
from ..runtime import distributed as dist
from ..runtime.logging import progress_enabled
from ..runtime.precision import amp_dtype
from .fingerprint import backbone_path, cache_folder, fingerprint
from .store import HiddenCache, Writer, lock, open_cache

log = logging.getLogger("adapter4rec")


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


def reads(cfg, model) -> dict[str, list[int]] | None:
    """{modality: layers} the run's method reads from the cache, or None (no cache for this run)."""
    side = side_network(model)
    if side is not None:
        return {m: list(v) for m, v in side.layers.items()} if cfg.cache.enabled else None
    if cfg.cache.frozen and cfg.cache.enabled:
        enc = model.item_encoder
        if getattr(enc, "backbone", None) is None or getattr(enc, "project", None) is None:
            if cfg.peft.method == "frozen":
                raise ConfigError("cache.frozen: the frozen item encoder must be a text or image backbone")
        elif untouched_backbone(enc):  # frozen, or any method with towers: [user]
            return {m: [LAST] for m in modal_encoders(enc)}
        else:
            log.info("cache.frozen: the item backbone of %s trains or holds inserted modules, so it "
                     "runs (nothing is cached)", cfg.peft.method)
    return None


def untouched_backbone(enc) -> bool:
    """Is ``enc``'s backbone the pretrained one as loaded: nothing in it trains, nothing is
    inserted (``peft_*`` modules) or hooked into it? Then it is a fixed feature extractor (it runs
    in eval mode, docs/differences.md) and its pooled output is what a cache of it holds."""
    b = enc.backbone
    if getattr(enc, "peft_side", None) is not None or any(p.requires_grad for p in b.parameters()):
        return False
    own = getattr(enc, "own_hooks", frozenset())
    return not any("peft_" in name or set(m._forward_hooks) - own or set(m._forward_pre_hooks) - own
                   for name, m in b.named_modules())


def modal_contents(content, modalities) -> dict:
    stores = getattr(content, "stores", None)
    if stores is not None:
        return {m: stores[m] for m in modalities}
    (m,) = modalities
    return {m: content}


def _opened_everywhere(found: HiddenCache | None, folder: Path, fp: dict) -> HiddenCache | None:
    """Rank 0 looked for the cache (``found``, its rows verified); every rank gets it or None.
    The other ranks open the same index without reading the rows again."""
    if not dist.broadcast_object(found is not None):
        return None
    cache = found or open_cache(folder, fp, verify=False)
    if cache is None:
        raise DataError("rank 0 opened the hidden-state cache here but this rank cannot (was it "
                        "replaced meanwhile?); run again", folder)
    return cache


def build_cache(encoder, store, folder: str | Path, layers: list[int], fingerprint: dict,
                dtype: str = "float16", batch_size: int = 256, device=None, amp=None,
                progress: bool = True, num_workers: int = 0, desc: str = "cache",
                reuse: bool = True) -> HiddenCache:
    """Encode every item of ``store`` once with the frozen ``encoder`` and write the pooled states of
    ``layers`` to ``folder`` (see ``store.py``). Under DDP each rank encodes a contiguous shard.

    Rank 0 holds the folder's lock from the look for a finished cache until the new one is
    published and every rank has opened it. With ``reuse``, a cache with this fingerprint that
    another process finished while this one waited for the lock is used instead of rebuilt."""
    folder = Path(folder)
    device = device or torch.device("cpu")
    main = dist.is_main()
    with lock(folder) if main else nullcontext():
        if reuse:
            found = _opened_everywhere(open_cache(folder, fingerprint, quiet=True) if main else None,
                                       folder, fingerprint)
            if found is not None:
                log.info("hidden-state cache %s: another process built it while this one "
                         "waited; using it", folder)
                return found
        n = len(store)
        hidden = encoder.backbone.config.hidden_size
        writer = Writer(folder, n, layers, hidden, dtype)
        # every rank writes its rows into the one temporary array rank 0 created
        writer.tmp = dist.broadcast_object(writer.create() if main else None)
        try:
            writer.open()
            seconds = _encode(encoder, store, writer, device, amp, batch_size, num_workers,
                              progress, desc)
            cache = None
            if main:
                cache = writer.finish(fingerprint, build_seconds=round(seconds, 3), items=n,
                                      device=str(device), ranks=dist.world())
        finally:
            if main:
                writer.discard()  # nothing left behind when the build failed (gone once renamed)
        dist.barrier()
        cache = cache or open_cache(folder, fingerprint, verify=False)
        if cache is None:
            raise DataError("the hidden-state cache rank 0 published is not there", folder)
        dist.barrier()  # the lock is released once every rank has opened the new array
    log.info("hidden-state cache %s: built [%d, %d, %d] %s in %.1f s (%.0f items/s)", folder,
             *cache.shape, dtype, seconds, n / max(seconds, 1e-9))
    return cache


def _encode(encoder, store, writer: Writer, device, amp, batch_size, num_workers, progress,
            desc) -> float:
    """This rank's shard of the items through ``encoder`` into ``writer``; the slowest rank's
    seconds."""
    n = len(store)
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
                states = layer_states(encoder, content, layers=writer.layers)
            writer.write(start, states)
            bar.update(len(states))
    writer.close()
    encoder.to(was)
    dist.barrier()
    return dist.all_reduce_sum(torch.tensor([time.time() - t0], device=device)).max().item()


def release_backbone(encoder) -> int:
    """Free the weights of a frozen backbone whose states come from the cache; returns the bytes
    freed. Parameter names stay (an adapter file's tower signature is unchanged); running the
    backbone afterwards raises a clear error."""
    freed = free_tensors([encoder.backbone])
    encoder.backbone_released = True
    return freed


def free_tensors(modules) -> int:
    """Replace every parameter and buffer of ``modules`` by an empty tensor (names kept); the
    bytes freed."""
    freed = 0
    for top in modules:
        for module in top.modules():
            for store in (module._parameters, module._buffers):
                for t in store.values():
                    if t is not None and t.numel():
                        freed += t.numel() * t.element_size()
                        t.data = torch.empty(0, dtype=t.dtype, device=t.device)
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
    layers = reads(cfg, model)
    if not layers:
        return content
    device = device or dist.setup()
    encoders = modal_encoders(model.item_encoder)
    stores = modal_contents(content, list(layers))
    amp = amp_dtype(cfg.train.amp, device)
    caches = {}
    for m, lay in layers.items():
        enc, store, model_dir = encoders[m], stores[m], backbone_path(cfg, m)
        if getattr(enc, "backbone_released", False):
            raise ConfigError("the backbone was already released: attach the cache once per model")
        fp = fingerprint(enc, store, lay, model_dir, cfg.cache.dtype, amp)
        folder = cache_folder(cfg, m, lay)
        # rank 0 checks the rows; the old cache stays in place until a rebuild publishes its own
        cache = None
        if not cfg.cache.rebuild:
            cache = _opened_everywhere(open_cache(folder, fp) if dist.is_main() else None, folder, fp)
        if cache is None:
            cache = build_cache(enc, store, folder, lay, fp, cfg.cache.dtype, cfg.cache.batch_size,
                                device, amp, progress_enabled(cfg.train.progress), cfg.train.num_workers,
                                desc=f"caching {m} hidden states", reuse=not cfg.cache.rebuild)
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

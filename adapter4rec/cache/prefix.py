"""The frozen-prefix cache: token-level hidden states entering the lowest trainable layer.

When every trainable or inserted module of an item backbone sits in layer k > 0 or above
(houlsby/pfeiffer/parallel/lora/compacter/layernorm/bitfit with ``layers`` restricted to upper
layers), the hidden states entering layer k are a function of the frozen weights and the item's
content only: the embeddings and layers 0..k-1 run in eval mode on every path
(``ContentEncoder.train``). They are computed once per item into the same memory-mapped store as
the iisan cache (``store.py``: lock, per-block checksums, fingerprint), 16-bit, as an array
[items + 1, tokens, hidden] (the store's middle axis holds token positions here), and training and
evaluation run only layers k..L-1 (``ContentEncoder.run_upper``).

``cache.prefix: auto`` (the default) uses it wherever it applies; ``off`` never. Not for
``prompt`` or ``full`` (their lowest trainable module is the embeddings), nor for ViT-MAE (its
embeddings shuffle the patches) or two-backbone items; nor when something hooks a prefix module
(a method reading lower layers from outside).
"""
from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.batching import item_loader
from ..encoders.backbone import ContentEncoder, lowest_trainable_layer, prefix_modules
from ..encoders.sites import layer_list
from ..errors import ConfigError, DataError
from ..runtime import distributed as dist
from ..runtime.logging import progress_enabled
from ..runtime.precision import amp_dtype
from .build import _opened_everywhere, _trim_heap, free_tensors
from .fingerprint import (backbone_path, cache_folder, config_digest, content_fingerprint, digest,
                          module_digest)
from .store import HiddenCache, Writer, lock, open_cache

log = logging.getLogger("adapter4rec")

FAMILIES = ("bert", "roberta", "vit")  # site maps whose embeddings can pass states through


class PrefixContent:
    """The content store of a run with the frozen-prefix cache: ids -> ``{"prefix": [n, T, hidden]
    (16-bit), "attention_mask": [n, T]}`` (text; T trimmed to the batch's longest title, as the
    token store does) or ``{"prefix": ...}`` (images)."""

    def __init__(self, cache: HiddenCache, store, layer: int, text: bool):
        self.cache, self.store, self.layer, self.text = cache, store, layer, text

    def __len__(self) -> int:
        return len(self.cache)

    def get(self, ids: np.ndarray) -> dict[str, torch.Tensor]:
        ids = np.asarray(ids, dtype=np.int64)
        if not self.text:
            return {"prefix": self.cache.rows(ids)}
        mask = self.store.get(ids)["attention_mask"]
        states = self.cache.rows(ids)[:, :mask.shape[1]]
        return {"prefix": states, "attention_mask": mask}


def _hooked(modules) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for top in modules for m in top.modules())


def prefix_layer(cfg, model) -> int | None:
    """k > 0 when this run can read layers 0..k-1 of its item backbone from the frozen-prefix
    cache (see the module's docstring), else None."""
    enc = model.item_encoder
    if (cfg.cache.prefix != "auto" or not cfg.cache.enabled or not isinstance(enc, ContentEncoder)
            or enc.peft_side is not None or getattr(enc, "backbone_released", False)
            or enc.backbone.config.model_type not in FAMILIES):
        return None
    k, _ = lowest_trainable_layer(enc.backbone)
    if not k:  # None: nothing trains (frozen: cache.frozen serves it); 0: the embeddings train
        return None
    if _hooked(prefix_modules(enc.backbone, k)):
        return None
    return k


class _Stop(Exception):
    """Raised by the capture hook: the layers above the prefix need not run while building."""


def prefix_states(encoder: ContentEncoder, content: dict, k: int) -> torch.Tensor:
    """The token-level hidden states entering layer ``k`` for items ``content``, the encoder in
    eval mode (what both paths compute)."""
    layers = layer_list(encoder.backbone)
    got = {}

    def keep(module, args, out):
        got["h"] = out[0] if isinstance(out, tuple) else out
        raise _Stop

    handle = layers[k - 1].register_forward_hook(keep)
    was = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            encoder(**content)
    except _Stop:
        pass
    finally:
        handle.remove()
        encoder.train(was)
    return got["h"]


def fingerprint(encoder: ContentEncoder, store, k: int, model_dir: str, dtype: str, amp) -> dict:
    """What the states are computed from: the prefix modules' weights (not the upper layers', which
    may train), the backbone's config, the items' content, the layer and the precision."""
    backbone = encoder.backbone
    weights = digest(*[module_digest(m) for m in prefix_modules(backbone, k)])
    return {"backbone": {"model_type": backbone.config.model_type,
                         "config": config_digest(backbone), "prefix_weights": weights},
            "content": content_fingerprint(store, model_dir), "kind": "prefix",
            "entering_layer": k, "dtype": dtype, "precision": "bf16" if amp == torch.bfloat16 else "fp32"}


def _width(encoder: ContentEncoder, store) -> int:
    tokens = getattr(store, "tokens", None)
    if tokens is not None:
        return int(tokens.shape[1])
    cfg = encoder.backbone.config
    return (int(cfg.image_size) // int(cfg.patch_size)) ** 2 + 1


def build_prefix_cache(encoder, store, folder, k: int, fp: dict, dtype="float16", batch_size=256,
                       device=None, amp=None, progress=True, num_workers=0) -> HiddenCache:
    """Encode every item's prefix once and write it to ``folder`` (rank 0 only under DDP; the other
    ranks wait and open it)."""
    folder = Path(folder)
    device = device or torch.device("cpu")
    with lock(folder) if dist.is_main() else nullcontext():
        found = _opened_everywhere(open_cache(folder, fp, quiet=True) if dist.is_main() else None,
                                   folder, fp)
        if found is not None:
            return found
        n, seconds, cache = len(store), 0.0, None
        if dist.is_main():
            writer = Writer(folder, n, list(range(_width(encoder, store))),
                            encoder.backbone.config.hidden_size, dtype)
            writer.create()
            try:
                writer.open()
                was = next(encoder.parameters()).device
                encoder.to(device)
                t0 = time.time()
                loader = item_loader(store, np.arange(1, n + 1), batch_size, num_workers,
                                     pin_memory=device.type == "cuda")
                with tqdm(total=n, desc="caching the frozen prefix", unit="item", leave=False,
                          disable=not progress) as bar:
                    for start, content in loader:
                        content = {k_: v.to(device, non_blocking=True) for k_, v in content.items()}
                        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                            h = prefix_states(encoder, content, k)
                        full = h.new_zeros(len(h), writer.shape[1], h.shape[-1])
                        full[:, :h.shape[1]] = h  # titles trimmed to the batch's longest
                        writer.write(start, full)
                        bar.update(len(h))
                writer.close()
                seconds = time.time() - t0
                encoder.to(was)
                cache = writer.finish(fp, build_seconds=round(seconds, 3), items=n,
                                      device=str(device), kind="prefix", entering_layer=k)
            finally:
                writer.discard()
        dist.barrier()
        cache = cache or open_cache(folder, fp, verify=False)
        if cache is None:
            raise DataError("the frozen-prefix cache rank 0 published is not there", folder)
        dist.barrier()
    log.info("frozen-prefix cache %s: built [%d, %d, %d] %s in %.1f s (%.0f items/s)", folder,
             *cache.shape, dtype, seconds, n / max(seconds, 1e-9))
    return cache


def release_prefix(encoder: ContentEncoder, k: int) -> int:
    """Free the weights of the prefix modules (never run again in this process); bytes freed."""
    freed = free_tensors(prefix_modules(encoder.backbone, k))
    encoder.prefix_released = True
    return freed


def attach_prefix(cfg, model, data, content, device=None):
    """``content``, or a ``PrefixContent`` when the run can use the frozen-prefix cache (opened, or
    built on first use); the item encoder then runs only its layers from the prefix layer on."""
    k = prefix_layer(cfg, model)
    if k is None or not hasattr(content, "get") or isinstance(content, PrefixContent):
        return content
    enc = model.item_encoder
    device = device or dist.setup()
    amp = amp_dtype(cfg.train.amp, device)
    fp = fingerprint(enc, content, k, backbone_path(cfg, enc.modality), cfg.cache.dtype, amp)
    folder = cache_folder(cfg, enc.modality, ["prefix", k])
    cache = None
    if not cfg.cache.rebuild:
        cache = _opened_everywhere(open_cache(folder, fp) if dist.is_main() else None, folder, fp)
    if cache is None:
        if cfg.cache.rebuild and dist.is_main():
            (folder / "index.json").unlink(missing_ok=True)
        cache = build_prefix_cache(enc, content, folder, k, fp, cfg.cache.dtype, cfg.cache.batch_size,
                                   device, amp, progress_enabled(cfg.train.progress),
                                   cfg.train.num_workers)
    if cache.shape[2] != enc.backbone.config.hidden_size:
        raise ConfigError(f"frozen-prefix cache {folder}: hidden size {cache.shape[2]}, the backbone's "
                          f"{enc.backbone.config.hidden_size}")
    enc.prefix_layer = k
    freed = release_prefix(enc, k) if cfg.cache.release_backbone else 0
    _trim_heap()
    size = cache.shape[0] * cache.shape[1] * cache.shape[2] * 2
    log.info("frozen-prefix cache %s: layers 0..%d of the item backbone come from it (%.0f MB on "
             "disk; %.0f MB of their weights released); training and evaluation run layers %d..",
             folder, k - 1, size / 2**20, freed / 2**20, k)
    return PrefixContent(cache, content, k, enc.modality == "text")


__all__ = ["PrefixContent", "attach_prefix", "build_prefix_cache", "prefix_layer", "prefix_states",
           "release_prefix", "fingerprint"]

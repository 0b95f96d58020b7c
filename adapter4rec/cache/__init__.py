"""Hidden-state cache: one frozen-backbone pass over all items, then training and evaluation that
never run the backbone.

A decoupled method (``peft.method: iisan``) reads only the frozen backbone's per-layer pooled
states, which no trainable parameter influences; so do ``frozen`` runs (the pooled last layer) when
``cache.frozen`` is set. ``attach`` (``build.py``, called by ``pipeline.prepare`` right after
``peft.apply``) opens the cache whose fingerprint (``fingerprint.py``) matches, or builds it, and
returns the content store the run uses instead of tokens/pixels: ``CachedContent.get(ids)`` ->
``{"hidden": [n, layers, hidden]}`` (``hidden_text`` / ``hidden_image`` for two modalities),
16-bit, straight from the memory map (``store.py``: the format on disk, the build lock, the
per-block row checksums checked at open).

    adapter4rec cache build --config configs/adapt/scientific_iisan.yaml  # ahead of training (optional)
    adapter4rec cache info ~/.cache/adapter4rec/<folder>

Where: ``cache.dir``, else ``$ADAPTER4REC_CACHE``, else ``~/.cache/adapter4rec``; one folder per
(data, backbone, modality, source checkpoint, layers read).
"""
from .build import CachedContent, attach, build_cache, reads, release_backbone
from .fingerprint import cache_folder, cache_root, differences, digest, fingerprint, module_digest
from .store import HiddenCache, load_index, open_cache, read_index

__all__ = ["CachedContent", "HiddenCache", "attach", "build_cache", "fingerprint", "cache_folder",
           "cache_root", "reads", "release_backbone", "open_cache", "read_index", "load_index",
           "differences", "digest", "module_digest"]

"""What a hidden-state cache is computed from, and where it lives.

The fingerprint says what the rows were computed from: the backbone's weights (a hash of the
tensors actually used, so a source-domain checkpoint loaded with ``init_from`` counts), its config,
the items' content (for text: a hash of the token matrix, which covers the items, their order, the
tokenizer and ``max_title_len``), the pooling, the layers and the precision of the pass.

Where: ``cache.dir``, else ``$ADAPTER4REC_CACHE``, else ``~/.cache/adapter4rec``; one folder per
(data, backbone, modality, source checkpoint, layers read).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..runtime.io import tensors_digest

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                   "merges.txt", "special_tokens_map.json", "spiece.model")


def digest(*parts) -> str:
    """A short stable hash of strings / bytes / arrays / tensors (blake2b, 16 bytes)."""
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        if isinstance(p, torch.Tensor):
            t = p.detach().cpu().contiguous()
            if t.dtype == torch.bfloat16:
                t = t.view(torch.int16)
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.numpy().data if t.numel() else b"")
        elif isinstance(p, np.ndarray):
            a = np.ascontiguousarray(p)
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.data)
        elif isinstance(p, bytes):
            h.update(p)
        else:
            h.update(str(p).encode())
        h.update(b"\x00")
    return h.hexdigest()


def module_digest(module: torch.nn.Module) -> str:
    """Hash of every parameter and buffer of ``module`` (names, dtypes, shapes, values): the same
    hash as an adapter's frozen fingerprint (``runtime.io.tensors_digest``)."""
    return tensors_digest(module.state_dict())


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two fingerprints."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out


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
                 "" if layers is None else layers, d.user_fraction, d.fraction_seed)
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


def config_digest(backbone) -> str:
    """Hash of a transformers backbone's config (its version number left out)."""
    config = {k: v for k, v in backbone.config.to_diff_dict().items() if k != "transformers_version"}
    return digest(json.dumps(config, sort_keys=True, default=str))


def fingerprint(encoder, store, layers: list[int], model_dir: str, dtype: str, amp) -> dict:
    backbone = encoder.backbone
    return {"backbone": {"model_type": backbone.config.model_type,
                         "config": config_digest(backbone),
                         "weights": module_digest(backbone)},
            "content": content_fingerprint(store, model_dir),
            "pooling": encoder.pooling, "layers": list(layers), "dtype": dtype,
            "precision": "bf16" if amp == torch.bfloat16 else "fp32"}

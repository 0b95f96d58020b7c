"""`adapter4rec cache build | info`: the hidden-state cache ahead of training, and its index."""
from __future__ import annotations

import json

from ..cache import CachedContent, load_index
from ..cache.prefix import PrefixContent
from ..config import load_config
from ..errors import ConfigError
from ..pipeline import build_run
from ..runtime.logging import setup_logging


def add_cache_parser(subparsers) -> None:
    c = subparsers.add_parser("cache", help="build or inspect the hidden-state cache (iisan, cached frozen, frozen prefix)")
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
    cfg = load_config(args.config, args.set)
    cfg.train.progress = True
    setup_logging()
    if not cfg.cache.enabled:
        raise ConfigError("cache.enabled is false in this config")
    cfg.cache.rebuild = args.rebuild or cfg.cache.rebuild
    content = build_run(cfg).content
    if isinstance(content, PrefixContent):
        c = content.cache
        print(f"frozen prefix (layers 0..{content.layer - 1}): {c.folder} {list(c.shape)} {c.dtype}")
        return
    if not isinstance(content, CachedContent):
        raise ConfigError(f"peft.method {cfg.peft.method!r} with these options reads no cached hidden states "
                          "(iisan does; frozen does with cache.frozen: true; a method inserted in upper "
                          "layers only does with cache.prefix: auto)")
    for m, c in content.caches.items():
        print(f"{m}: {c.folder} {list(c.shape)} {c.dtype} layers {c.layers}")


def _info_main(args) -> None:
    print(json.dumps(load_index(args.folder), indent=2))  # a DataError says what is wrong

"""Parameter-efficient transfer: every adapter method of the study behind one switch.

    from adapter4rec import peft
    peft.available()                      # ['full', 'frozen', 'houlsby', ...]
    summary = peft.apply(model, "houlsby", towers="both", item_bottleneck=64)
    peft.save_adapter(model, "target.safetensors")     # trainable parameters + config only
    peft.load_adapter(fresh_model, "target.safetensors")

One module per method, each registering an options dataclass and an ``insert`` function
(``registry.register``); the site map of each backbone family is in ``adapter4rec.encoders.sites``
and the towers a method inserts into in ``towers.py``. See docs/peft.md.
"""
from __future__ import annotations

from . import bitfit, bottleneck, compacter, full, kadapter, layernorm, lora, prompt  # noqa: F401  (register)
from . import iisan  # noqa: F401  (register: decoupled side networks, adapter4rec.cache)
from .bottleneck import Bottleneck
from .files import AdapterBank, load_adapter, model_bytes, read_adapter, save_adapter
from .lora import merge, unmerge
from .options import describe
from .registry import apply, available, defaults, get, register, resolve, summary
from ..encoders.sites import SITE_MAPS, SiteMap, site_map


def options_of(method: str) -> list[tuple[str, object, str]]:
    """(option, default, description) of every option of ``method``."""
    return describe(get(method).options)


__all__ = ["available", "apply", "summary", "defaults", "resolve", "options_of", "register",
           "save_adapter", "load_adapter", "read_adapter", "AdapterBank", "merge", "unmerge",
           "model_bytes", "Bottleneck", "SiteMap", "SITE_MAPS", "site_map"]

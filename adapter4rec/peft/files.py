"""Adapter-only files, and several target domains' adapters over one backbone.

An adapter file is a safetensors file of the trainable parameters only (``trainable_state``: the
inserted modules, the tuned LayerNorms / biases, the item head) with metadata carrying the PEFT
config that rebuilds them (``adapter4rec_peft``: JSON) and a signature of the towers it was trained
on, and a fingerprint of the frozen weights it was trained over (``adapter4rec_frozen``: per tower,
a hash of every parameter the file does not hold). Loading needs the backbone (the model built from
the backbone folder and the source checkpoint, exactly as for training) and the adapter file; an
adapter whose frozen weights differ from the model's (another backbone checkpoint, a source run
trained again) is refused, naming the towers, unless ``allow_source_change``. A run folder written by ``train`` serves as well: its
``checkpoints/best/model.safetensors`` holds the same trainable parameters and its ``config.yaml``
the PEFT config.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..runtime.io import (load_into, load_weights, save_weights, tensors_digest, trainable_state,
                          weights_metadata)
from . import options as opt
from .lora import is_merged
from .registry import apply, get
from .towers import towers as model_towers

FORMAT = "adapter4rec-adapter"
# 2 (0.2): the PEFT config names every option of 0.2's methods, a frozen fingerprint; 1 (0.1,
# no version written): read with the options that give 0.1's functions (``_read_as_written``)
FORMAT_VERSION = 2
META_VERSION = "adapter4rec_format_version"
META_PEFT = "adapter4rec_peft"
META_TOWERS = "adapter4rec_towers"
META_FROZEN = "adapter4rec_frozen"


def frozen_fingerprint(model: nn.Module, held=None, values: dict | None = None) -> dict[str, str]:
    """{tower: hash of its parameters that ``held`` (names; default: the trainable ones) does not
    contain}: the frozen weights an adapter was trained over. ``values`` (name -> tensor) stand in
    for the model's current ones (``AdapterBank``: the backbone's own values). A model whose
    backbone was released for the hidden-state cache answers with the fingerprint taken before
    the release."""
    cached = getattr(model, "frozen_fingerprint_", None)
    enc = getattr(model, "item_encoder", None)
    released = getattr(enc, "backbone_released", False) or getattr(enc, "prefix_released", False)
    if cached is not None and (held is None or released):
        return dict(cached)
    params = {**dict(model.named_parameters()), **(values or {})}
    held = set(held) if held is not None else {n for n, p in params.items() if p.requires_grad}
    return {name: tensors_digest({n: p for n, p in params.items()
                                  if n.startswith(t.prefix) and n not in held})
            for name, t in model_towers(model).items()}


def check_frozen(want: dict | None, have: dict, source: str, allow: bool = False) -> None:
    """Refuse (naming the towers) when ``want``, an adapter's or a run's frozen fingerprint,
    differs from ``have``, the model's."""
    if want is None or allow:
        return
    diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    if diff:
        raise CheckpointError(f"{source} was trained over other frozen weights than this model's "
                              f"(they differ in the {', '.join(diff)} tower{'s' if len(diff) > 1 else ''}: "
                              "another backbone checkpoint, or a source run trained again); rebuild "
                              "the model from the run's own source, or pass allow_source_change "
                              "(--allow-source-change) to accept it")


def tower_signature(model: nn.Module) -> dict:
    """Family, width and depth of each tower: an adapter only fits towers of the same shape."""
    return {n: {"model_type": getattr(getattr(t.module, "config", None), "model_type", t.sites.family),
                "hidden": t.hidden, "layers": len(t.layer_list)}
            for n, t in model_towers(model).items()}


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of the model (what a full checkpoint would hold)."""
    seen, total = set(), 0
    for t in (*model.parameters(), *model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def save_adapter(model: nn.Module, path: str | Path) -> dict:
    """Write the trainable parameters of ``model`` + its PEFT config to ``path`` (safetensors).

    Returns the sizes: ``adapter_bytes`` (the file), ``adapter_params``, and for comparison
    ``model_bytes`` / ``model_params`` (the whole model, backbone included)."""
    cfg = getattr(model, "peft_config", None)
    if not cfg:
        raise CheckpointError("save_adapter: the model has no PEFT method applied (peft.apply first)")
    if is_merged(model):
        raise CheckpointError("save_adapter: LoRA is merged into the base weights; unmerge first")
    state = trainable_state(model)
    path = Path(path)
    save_weights(state, path, metadata={"format": FORMAT, META_VERSION: str(FORMAT_VERSION),
                                        META_PEFT: json.dumps(cfg),
                                        META_TOWERS: json.dumps(tower_signature(model)),
                                        META_FROZEN: json.dumps(frozen_fingerprint(model))})
    return {"path": str(path), "adapter_bytes": path.stat().st_size,
            "adapter_params": sum(v.numel() for v in state.values()),
            "model_bytes": model_bytes(model), "model_params": sum(p.numel() for p in model.parameters())}


def read_adapter(path: str | Path, config: dict | None = None,
                 with_frozen: bool = False) -> tuple:
    """(weights, peft config, tower signature or None) of an adapter file, a checkpoint folder or a
    run folder (and, ``with_frozen``, the frozen fingerprint or None). ``config`` ({"method": ..,
    **options}) overrides / supplies the PEFT config."""
    p = Path(path)
    run_cfg = None
    if p.is_dir() and (p / "config.yaml").is_file():  # a run folder
        from ..config import load_config

        c = load_config(p / "config.yaml")
        run_cfg = {"method": c.peft.method, **c.peft.options}
        p = p / "checkpoints" / "best"
    if p.is_dir():
        p = p / "model.safetensors"
    if not p.is_file():
        raise CheckpointError(f"no adapter file at {p}")
    meta = weights_metadata(p)
    version = int(meta.get(META_VERSION, 1))
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{p} is an adapter file of format version {version}; this version of "
                              f"adapter4rec reads up to {FORMAT_VERSION}: upgrade adapter4rec (see "
                              "CHANGELOG.md)")
    cfg = config or (json.loads(meta[META_PEFT]) if META_PEFT in meta else run_cfg)
    if config is None and META_PEFT in meta and version < 2:
        cfg = _read_as_written(cfg)
    if cfg is None:
        raise CheckpointError(f"{p} carries no PEFT config (not written by save_adapter): pass "
                              "config={'method': ..., **options} or the run folder instead")
    signature = json.loads(meta[META_TOWERS]) if META_TOWERS in meta else None
    if with_frozen:
        frozen = json.loads(meta[META_FROZEN]) if META_FROZEN in meta else None
        return load_weights(p), dict(cfg), signature, frozen
    return load_weights(p), dict(cfg), signature


def _read_as_written(cfg: dict) -> dict:
    """The config of a 0.1 adapter file with the options that compute what it computed then:
    0.1's ``pfeiffer`` was a Houlsby-form adapter after the FFN (no ``original_ln_before``), and
    0.1's ``iisan`` the earlier side network (``iisan.EARLIER_OPTIONS``)."""
    if cfg.get("method") in ("houlsby", "pfeiffer", "parallel", "compacter"):
        cfg = {"original_ln_before": False, "scaling": 1.0, **cfg}
    if cfg.get("method") == "iisan":
        from .iisan import EARLIER_OPTIONS
        cfg = {**EARLIER_OPTIONS, **{k: v for k, v in cfg.items() if k not in EARLIER_OPTIONS
                                     or k in ("activation", "dropout")}}
    return cfg


def _resolved(cfg: dict) -> dict:
    """The full config (every option, defaults filled in) of ``{"method": .., **options}``."""
    cfg = {k: v for k, v in cfg.items() if k != "merged"}
    method = cfg.pop("method")
    return {"method": method, **opt.parse(get(method).options, method, cfg).to_dict()}


def prepare_for(model: nn.Module, cfg: dict, signature: dict | None, source: str) -> None:
    """Apply ``cfg`` to a model without PEFT, or check that the applied one is the same."""
    if signature is not None:
        have = tower_signature(model)
        for name, sig in signature.items():
            if have.get(name) != sig:
                raise CheckpointError(f"adapter {source} was trained on a {name} tower {sig}; this "
                                      f"model's is {have.get(name)}")
    want = _resolved(cfg)
    if not getattr(model, "peft_config", None):
        apply(model, want.pop("method"), **{k: v for k, v in want.items()})
        return
    if is_merged(model):
        raise CheckpointError("LoRA is merged into the base weights: unmerge before loading adapters")
    have = _resolved(model.peft_config)
    if have != want:
        diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
        raise CheckpointError(f"adapter {source} was trained with another PEFT config than this "
                              f"model's (differs in: {', '.join(diff)}); build a fresh model for it")


def _check_covers(model: nn.Module, state: dict, source: str) -> None:
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in state]
    if missing:
        raise CheckpointError(f"adapter {source} lacks {len(missing)} trainable parameters of this "
                              f"model (switching would keep another domain's values): "
                              f"{', '.join(missing[:10])}")


def load_adapter(model: nn.Module, path: str | Path, config: dict | None = None,
                 allow_source_change: bool = False) -> dict:
    """Load an adapter into ``model``, built from the backbone (and source checkpoint) as for
    training. Applies its PEFT config if the model has none yet; otherwise the configs must match
    and the adapter's weights replace the current ones in place (switching domains without
    reloading the backbone). Refuses an adapter trained over other frozen weights unless
    ``allow_source_change``. Returns the PEFT config."""
    state, cfg, signature, frozen = read_adapter(path, config, with_frozen=True)
    prepare_for(model, cfg, signature, str(path))
    _check_covers(model, state, str(path))
    check_frozen(frozen, frozen_fingerprint(model, held=state), f"adapter {path}", allow_source_change)
    load_into(model, state, str(path))
    return cfg


class AdapterBank:
    """Adapters of several target domains over one backbone, switched in place.

        bank = AdapterBank(model)                  # model: backbone + source checkpoint
        bank.add("scientific", "runs/adapt_sci")   # adapter files or run folders
        bank.add("office", "adapters/office.safetensors")
        bank.activate("scientific"); ...; bank.activate("office")

    Every domain must use the same PEFT config (the inserted modules are shared; only their
    weights, and the item head's, change). Weights are kept in memory (on the model's device).
    Files may hold different sets of parameters (a domain trained without a source checkpoint
    holds its whole user encoder): ``activate`` first puts back the backbone's own values of every
    parameter another domain changed, so each domain computes exactly what it computed alone.
    """

    def __init__(self, model: nn.Module, allow_source_change: bool = False):
        self.model = model
        self.states: dict[str, dict[str, torch.Tensor]] = {}
        self.base: dict[str, torch.Tensor] = {}  # the model's own values of what domains change
        self.active: str | None = None
        self.allow_source_change = allow_source_change

    @property
    def names(self) -> list[str]:
        return list(self.states)

    def add(self, name: str, path: str | Path, config: dict | None = None) -> None:
        state, cfg, signature, frozen = read_adapter(path, config, with_frozen=True)
        prepare_for(self.model, cfg, signature, str(path))
        _check_covers(self.model, state, str(path))
        own = dict(self.model.named_parameters())
        # values a domain changes are saved before any domain that holds them is active
        self.base.update({k: own[k].detach().clone() for k in state if k not in self.base})
        have = frozen_fingerprint(self.model, held=state, values=self.base)
        check_frozen(frozen, have, f"adapter {path}", self.allow_source_change)
        device = next(self.model.parameters()).device
        self.states[name] = {k: v.to(device) for k, v in state.items()}
        if self.active is None:
            self.activate(name)

    def activate(self, name: str) -> None:
        if name not in self.states:
            raise ConfigError(f"no adapter named {name!r} (have: {', '.join(self.states) or 'none'})")
        if is_merged(self.model):
            raise CheckpointError("LoRA is merged into the base weights: unmerge before switching")
        state = self.states[name]
        load_into(self.model, {k: v for k, v in self.base.items() if k not in state}, "the backbone")
        load_into(self.model, state, f"adapter {name!r}")
        self.active = name


__all__ = ["save_adapter", "load_adapter", "read_adapter", "AdapterBank", "tower_signature", "model_bytes",
           "frozen_fingerprint", "check_frozen"]

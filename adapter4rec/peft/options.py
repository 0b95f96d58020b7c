"""Typed method options: every method declares a dataclass; ``parse`` checks a ``peft.options`` dict
against it (unknown key or wrong type -> ``ConfigError`` naming ``peft.options.<key>``).

Options are spelled as booleans, integers, floats, lists and a few words (``both``, ``all``); never
as the strings "None" / "True" the reference used.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ConfigError

TOWERS = ("item", "user")
POSITIONS = ("mha", "ffn")


def _name(key: str) -> str:
    return f"peft.options.{key}"


def _words(value: Any, key: str, allowed: tuple[str, ...], both: str | None) -> list[str]:
    """``both`` (or ``all``), one word, or a list of words -> a list in canonical order."""
    if isinstance(value, str):
        value = list(allowed) if value == both else [value]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{_name(key)} must be {both!r}, one of {', '.join(allowed)} or a list of "
                          f"them; got {value!r}")
    bad = [v for v in value if v not in allowed]
    if bad:
        raise ConfigError(f"{_name(key)}: unknown value(s) {', '.join(map(repr, bad))} (allowed: "
                          f"{', '.join(allowed)}{', ' + both if both else ''})")
    return [a for a in allowed if a in value]


def towers(value, key="towers"):
    return _words(value, key, TOWERS, "both")


def positions(value, key="positions"):
    return _words(value, key, POSITIONS, "both")


def _layer_list(value, key):
    if value == "all":
        return "all"
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise ConfigError(f"{_name(key)} must be 'all' or a list of layer indices (negative counts "
                          f"from the last layer); got {value!r}")
    return list(value)


def layers(value, key="layers"):
    """``all``, a list of indices, or ``{item: ..., user: ...}`` with one of those per tower."""
    if isinstance(value, dict):
        bad = [k for k in value if k not in TOWERS]
        if bad:
            raise ConfigError(f"{_name(key)}: unknown tower(s) {', '.join(map(repr, bad))} "
                              f"(allowed: {', '.join(TOWERS)})")
        return {k: _layer_list(v, f"{key}.{k}") for k, v in value.items()}
    return _layer_list(value, key)


def choice(*allowed: str) -> Callable:
    def check(value, key):
        if value not in allowed:
            raise ConfigError(f"{_name(key)} must be one of {', '.join(allowed)}; got {value!r}")
        return value
    return check


def boolean(value, key):
    if not isinstance(value, bool):
        raise ConfigError(f"{_name(key)} must be true or false; got {value!r}")
    return value


def count(minimum: int = 1) -> Callable:
    def check(value, key):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(f"{_name(key)} must be an integer >= {minimum}; got {value!r}")
        return value
    return check


def number(minimum: float = 0.0, below: float | None = None) -> Callable:
    def check(value, key):
        if isinstance(value, str):  # YAML reads 1e-2 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if (not isinstance(value, (int, float)) or isinstance(value, bool) or value < minimum
                or (below is not None and value >= below)):
            rng = f">= {minimum}" + (f" and < {below}" if below is not None else "")
            raise ConfigError(f"{_name(key)} must be a number {rng}; got {value!r}")
        return float(value)
    return check


def option(default, check: Callable, doc: str = ""):
    """A dataclass field with its checker and a one-line description (used by docs and errors)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"check": check, "doc": doc})
    return field(default=default, metadata={"check": check, "doc": doc})


@dataclass
class Options:
    """Base of every method's options (no fields of its own)."""

    ALIASES = {}  # old or alternative spelling -> field name

    @property
    def layernorm_layers(self):
        """The layers whose LayerNorms ``tune_layernorm`` tunes: the method's ``layers`` (where its
        modules go). With ``all`` that is every LayerNorm of the tower, the embeddings' (BERT
        ``embeddings.LayerNorm``, SASRec ``ln_in``) and ViT's final ``layernorm`` included, as
        Houlsby et al.'s code and the reference tune them; with a list only the LayerNorms inside
        those layers, so the frozen layers below stay frozen (and cacheable)."""
        return getattr(self, "layers", "all")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TowerLayerOptions(Options):
    """Options of a method that tunes pretrained parameters of some towers and layers."""

    towers: list = option(["item", "user"], towers, "item, user or both")
    layers: object = option("all", layers, "all, or a list of layer indices (parameters outside the "
                            "layers, e.g. the embeddings' LayerNorm, only with all)")


def parse(cls: type, method: str, given: dict) -> Options:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in given.items():
        name = cls.ALIASES.get(key, key)
        if name not in fields:
            known = ", ".join(fields) or "none"
            raise ConfigError(f"{_name(key)}: unknown option for peft method '{method}' "
                              f"(its options: {known})")
        if name in values:
            raise ConfigError(f"{_name(key)} given twice (also as {name})")
        values[name] = fields[name].metadata["check"](value, key)
    return cls(**values)


def describe(cls: type) -> list[tuple[str, Any, str]]:
    """(name, default, description) of every option of ``cls``."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append((f.name, default, f.metadata.get("doc", "")))
    return out

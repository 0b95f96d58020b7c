"""Study suites: many runs declared in one YAML file, behind ``adapter4rec suite run`` (docs/suites.md).

A suite is a base config plus overrides: ``set`` for every run, a ``grid`` whose cartesian product
makes the runs (an axis is a config key with a list of values, or a name with named choices that
each set several keys) and/or a list of ``runs``. A run's name is built from its grid choices
(``method=houlsby,seed=1``) and is its folder under the suite's output. ``sources`` are
pretraining runs done first (a value ``source:NAME`` stands for that source's run folder, e.g. in
``train.init_from``); ``select`` picks, per group of runs, the value of a key with the best
validation metric on selection runs of its own, and the group's runs then take it.

Runs go one after another in this process, or to ``--jobs N`` worker processes (one device each);
a finished run (``metrics.json``) is skipped, an interrupted one (``metrics.jsonl`` or
``checkpoints/latest``) resumed. Every run's config, method and options are checked before the
first run starts. ``--smoke`` swaps in synthetic data and tiny models (made in the output folder)
and the suite's ``smoke`` overrides. ``<output>/suite.json`` holds the plan and each run's status
and metrics, rewritten after every run.
"""
from __future__ import annotations

import fnmatch
import itertools
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import peft
from ..config import NOT_COMPUTED, Config, load_config, read_run_config, save_config, validate
from ..errors import Adapter4RecError, ConfigError
from ..pipeline import MISSING, SOURCE_SHAPES, change_text, config_changes, dotted_get
from ..peft.options import parse as parse_options
from ..runtime.io import FolderLock, write_text_atomic
from ..training.trainer import train
from .sweep import COLUMNS, _row, format_table

SUITE_KEYS = ("name", "description", "config", "set", "grid", "runs", "names", "sources", "select",
              "output", "smoke")
SOURCE_KEYS = ("name", "config", "set", "output")
RUN_KEYS = ("name", "config", "set", "group")
SELECT_KEYS = ("key", "values", "metric", "per", "set", "only", "exclude")
SMOKE_KEYS = ("synthetic", "set", "grid", "select", "output", "same_domain")
SOURCE_REF = "source:"            # a value "source:NAME": the folder of the suite's source NAME
RESERVED = ("sources", "select", "synthetic")  # folders of the output that hold no main run
DONE = ("skipped", "trained", "resumed", "reused")  # a run with metrics.json
SYNTHETIC = {  # --smoke data: sizes of make_transfer_pair / make_image_transfer_pair
    "text": {"source_users": 300, "source_items": 120, "target_users": 200, "target_items": 100},
    "image": {"source_users": 160, "source_items": 48, "target_users": 120, "target_items": 40,
              "image_size": 32},
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")
# paths that differ between machines for the same content (ADAPTER4REC_DATASETS, a moved copy):
# compared by their last part, the dataset's or the model's folder name
MOVABLE = ("data.path", "model.pretrained")


# ------------------------------------------------------------------------------------ the format

def _dump(value) -> str:
    """A value as the right-hand side of ``--set a.b=value`` (YAML, one line)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=2**31)
    return text.removesuffix("\n...\n").strip()


def _sets(value, where: str) -> list[str]:
    """A ``set`` section (a mapping of dotted keys to values, or a list of ``a.b=value``) as
    ``--set`` strings, in order."""
    if value is None:
        return []
    if isinstance(value, dict):
        if not all(isinstance(k, str) and k for k in value):
            raise ConfigError(f"{where}: keys must be dotted config keys, got {list(value)!r}")
        return [f"{k}={_dump(v)}" for k, v in value.items()]
    if isinstance(value, list) and all(isinstance(s, str) and "=" in s for s in value):
        return list(value)
    raise ConfigError(f"{where} must be a mapping of config keys to values, or a list of "
                      f"'a.b=value'; got {value!r}")


def _split(s: str) -> tuple[str, object]:
    key, raw = s.split("=", 1)
    try:
        return key, (yaml.safe_load(raw) if raw != "" else "")
    except yaml.YAMLError:
        return key, raw


def _label(value) -> str:
    """A value as it shows in a run name: 0.0001, 1e-05, true, item+user, none."""
    if value is None or value == "":
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "+".join(_label(v) for v in value)
    if isinstance(value, dict):
        return "+".join(f"{k}-{_label(v)}" for k, v in value.items())
    return str(value)


def _safe(name: str) -> str:
    return _UNSAFE.sub("_", name)


def _check_name(name: str, where: str) -> str:
    if not name or name != _safe(name) or name[0] in ".-" or len(name) > 200:
        raise ConfigError(f"{where}: {name!r} is not a usable name (letters, digits and . _ = , + -, "
                          "not starting with . or -, at most 200 characters)")
    return name


def short_names(keys: list[str], given: dict | None = None) -> dict[str, str]:
    """Each key's name in run names: its last dotted part, or as many last parts as make it
    unique among ``keys``; ``given`` (the suite's ``names``) overrides."""
    given = given or {}
    out = {}
    for k in keys:
        if k in given:
            out[k] = str(given[k])
            continue
        parts = k.split(".")
        for n in range(1, len(parts) + 1):
            cand = ".".join(parts[-n:])
            if not any(o != k and ".".join(o.split(".")[-n:]) == cand for o in keys):
                break
        out[k] = cand
    seen: dict[str, str] = {}
    for k, s in out.items():
        _check_name(s, f"names: the short name of {k}")
        if s in seen:
            raise ConfigError(f"names: {seen[s]} and {k} would both be called {s!r} in run names")
        seen[s] = k
    return out


@dataclass
class Axis:
    """One grid axis: ``name`` is a config key (a list of values) or a name of named choices."""

    name: str
    choices: list[tuple[str, list[str]]]   # (label, --set strings)


def _choice_sets(sets, where: str, base: Path | None) -> list[str]:
    """A named choice's overrides; its ``config: FILE`` (relative to the suite file) becomes the
    entry ``config=PATH``, which replaces the run's config file."""
    if isinstance(sets, dict) and "config" in sets:
        sets = dict(sets)
        rel = sets.pop("config")
        path = (base or Path(".")) / str(rel)
        if not path.is_file():
            raise ConfigError(f"{where}.config: {rel} ({path}) is not a file")
        return [f"config={os.path.relpath(path.resolve())}"] + _sets(sets, where)
    return _sets(sets, where)


def parse_axis(name, spec, where: str, base: Path | None = None) -> Axis:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: an axis needs a name (a config key), got {name!r}")
    if isinstance(spec, list) and spec:
        choices = [(_safe(_label(v)), [f"{name}={_dump(v)}"]) for v in spec]
    elif isinstance(spec, dict) and spec:
        choices = [(_check_name(_safe(str(label)), f"{where}.{name}"),
                    _choice_sets(sets, f"{where}.{name}.{label}", base))
                   for label, sets in spec.items()]
    else:
        raise ConfigError(f"{where}.{name} must be a non-empty list of values (of the config key "
                          f"{name}) or a mapping of names to overrides; got {spec!r}")
    labels = [label for label, _ in choices]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ConfigError(f"{where}.{name}: the values {', '.join(dupes)} give the same name twice")
    return Axis(name, choices)


def matches(name: str, pattern: str) -> bool:
    """``--only``: a glob over the whole name (``*houlsby*``), or terms that the name all has,
    each term exact or a glob of one term (``method=houlsby,seed=1`` matches
    ``method=houlsby,towers=item,seed=1``; ``method=frozen*`` matches ``users=1,method=frozen_items``)."""
    if fnmatch.fnmatchcase(name, pattern):
        return True
    terms = re.split(r"[,/]", name)
    return all(any(fnmatch.fnmatchcase(n, t) for n in terms) for t in re.split(r"[,/]", pattern) if t)


@dataclass
class Run:
    name: str                       # as printed and matched; a main run's folder under the output
    phase: str                      # source | select | main
    folder: Path
    config: Path | None             # the YAML it starts from
    sets: list[str]                 # its own overrides
    labels: dict = field(default_factory=dict)     # main runs of the grid: axis -> label
    group: str | None = None        # the selection group it is chosen in (select) or takes (main)
    choice: str | None = None       # select runs: the choice label
    selected: list[str] = field(default_factory=list)  # main: the selected choice's overrides
    status: str = "planned"         # planned, running, skipped, trained, resumed, failed, blocked
    #                                 (or "not run": left out by --only)
    metrics: dict | None = None
    error: str | None = None
    seconds: float | None = None
    overrides: list[str] = field(default_factory=list)  # every override it ran with, in order


@dataclass
class Select:
    key: str
    axis: Axis
    metric: str
    per: list[str]
    sets: list[str]
    only: list[str]
    exclude: list[str]


def _keys(data, known, where):
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    bad = [k for k in data if k not in known]
    if bad:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, bad))} (known: {', '.join(known)})")
    return data


def _patterns(value, where) -> list[str]:
    value = [value] if isinstance(value, str) else (value or [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a run-name pattern or a list of them, got {value!r}")
    return value


class Suite:
    """A suite file read and expanded: ``sources``, ``select_runs`` and ``main`` runs."""

    def __init__(self, path: str | Path, smoke: bool = False, output: str | Path | None = None,
                 overrides: list[str] | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"suite file {self.path} does not exist")
        try:
            data = yaml.safe_load(self.path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{self.path}: not valid YAML: {e}") from None
        try:
            self._read(data, smoke, output, overrides or [])
        except ConfigError as e:
            raise ConfigError(f"suite {self.path}: {e}") from None

    def _file(self, rel, where) -> Path | None:
        if rel is None:
            return None
        if not isinstance(rel, str):
            raise ConfigError(f"{where} must be a config file path, got {rel!r}")
        p = self.path.parent / rel  # relative to the suite file
        if not p.is_file():
            raise ConfigError(f"{where}: {rel} ({p}) is not a file")
        return p

    def _read(self, data, smoke, output, overrides) -> None:
        _keys(data, SUITE_KEYS, "the suite")
        self.name = _check_name(str(data.get("name") or self.path.stem), "name")
        self.description = str(data.get("description") or "")
        self.smoke = smoke
        sm = data.get("smoke")
        if smoke and sm is None:
            raise ConfigError("--smoke, but the suite has no 'smoke' section")
        sm = _keys(sm or {}, SMOKE_KEYS, "smoke")
        default = (sm.get("output") or f"runs/smoke/suites/{self.name}" if smoke
                   else data.get("output") or f"runs/suites/{self.name}")
        self.output = Path(output or default)
        self.config = self._file(data.get("config"), "config")
        self.set = _sets(data.get("set"), "set")
        self.smoke_set = _sets(sm.get("set"), "smoke.set") if smoke else []
        self.cli_set = list(overrides)
        self.synthetic = self._synthetic(sm.get("synthetic")) if smoke else None
        # smoke.same_domain: sources read the target domain too (GPSD pretrains on the same items)
        self.same_domain = bool(sm.get("same_domain", False))

        grid = data.get("grid") or {}
        if not isinstance(grid, dict):
            raise ConfigError(f"grid must be a mapping of axes, got {grid!r}")
        if smoke and sm.get("grid"):
            grid = {**grid, **_keys(sm["grid"], list(grid), "smoke.grid")}
        self.axes = [parse_axis(k, v, "grid", self.path.parent) for k, v in grid.items()]
        select = data.get("select")
        if smoke and sm.get("select"):
            if select is None:
                raise ConfigError("smoke.select, but the suite has no 'select' section")
            select = {**select, **_keys(sm["select"], SELECT_KEYS, "smoke.select")}
        self.select = self._select(select) if select is not None else None
        names = data.get("names") or {}
        if not isinstance(names, dict):
            raise ConfigError(f"names must map keys to short names, got {names!r}")
        keys = [a.name for a in self.axes] + ([self.select.key] if self.select else [])
        self.short = short_names(keys, names)
        self.sources = self._sources(data.get("sources"))
        self.main = self._grid_runs() + self._listed_runs(data.get("runs"))
        self._check_unique()
        self.select_runs = self._selection_runs()

    def _synthetic(self, spec) -> dict:
        if isinstance(spec, str):
            spec = {"kind": spec}
        if not isinstance(spec, dict) or spec.get("kind") not in SYNTHETIC:
            raise ConfigError(f"smoke.synthetic must be text or image (or a mapping with kind: and "
                              f"sizes), got {spec!r}")
        sizes = {**SYNTHETIC[spec["kind"]], **{k: v for k, v in spec.items() if k != "kind"}}
        bad = [k for k in sizes if k not in SYNTHETIC[spec["kind"]]]
        if bad:
            raise ConfigError(f"smoke.synthetic: unknown key(s) {', '.join(bad)} (known: kind, "
                              f"{', '.join(SYNTHETIC[spec['kind']])})")
        return {"kind": spec["kind"], **sizes}

    def _select(self, spec) -> Select:
        _keys(spec, SELECT_KEYS, "select")
        key = spec.get("key")
        if not isinstance(key, str) or not key:
            raise ConfigError("select.key must name the config key (or choice name) to select")
        if key in [a.name for a in self.axes]:
            raise ConfigError(f"select.key {key} is also an axis of the grid: select it or vary it")
        if "values" not in spec:
            raise ConfigError("select.values must list the values to choose from")
        axis = parse_axis(key, spec["values"], "select.values", self.path.parent)
        metric = spec.get("metric", "valid.NDCG@10")
        if not isinstance(metric, str) or "." not in metric:
            raise ConfigError(f"select.metric must be split.metric (e.g. valid.NDCG@10), got {metric!r}")
        per = spec.get("per") or []
        per = [per] if isinstance(per, str) else per
        axes = [a.name for a in self.axes]
        bad = [p for p in per if p not in axes]
        if not isinstance(per, list) or bad:
            raise ConfigError(f"select.per must list axes of the grid ({', '.join(axes) or 'none'}); "
                              f"got {spec.get('per')!r}")
        return Select(key, axis, metric, per, _sets(spec.get("set"), "select.set"),
                      _patterns(spec.get("only"), "select.only"),
                      _patterns(spec.get("exclude"), "select.exclude"))

    def _sources(self, spec) -> list[Run]:
        if spec is None:
            return []
        if not isinstance(spec, list):
            raise ConfigError(f"sources must be a list of {{name, config, set, output}}, got {spec!r}")
        out = []
        for i, s in enumerate(spec):
            _keys(s, SOURCE_KEYS, f"sources[{i}]")
            name = _check_name(str(s.get("name") or ""), f"sources[{i}].name")
            if any(r.name == f"sources/{name}" for r in out):
                raise ConfigError(f"sources: {name!r} is listed twice")
            folder = (self.output / "sources" / name if self.smoke or not s.get("output")
                      else Path(s["output"]))
            out.append(Run(f"sources/{name}", "source", folder,
                           self._file(s.get("config"), f"sources[{i}].config"),
                           _sets(s.get("set"), f"sources[{i}].set")))
        return out

    def _grid_runs(self) -> list[Run]:
        if not self.axes:
            return []
        runs = []
        for combo in itertools.product(*[a.choices for a in self.axes]):
            name = ",".join(f"{self.short[a.name]}={label}" for a, (label, _) in zip(self.axes, combo))
            _check_name(name, "grid (shorter names: names:)")
            sets = [s for _, part in combo for s in part]
            labels = {a.name: label for a, (label, _) in zip(self.axes, combo)}
            runs.append(Run(name, "main", self.output / name, self.config, sets, labels))
        return runs

    def _listed_runs(self, spec) -> list[Run]:
        if spec is None:
            return [] if self.axes else [Run("base", "main", self.output / "base", self.config, [])]
        if not isinstance(spec, list):
            raise ConfigError(f"runs must be a list of {{name, set}}, got {spec!r}")
        runs = []
        for i, r in enumerate(spec):
            _keys(r, RUN_KEYS, f"runs[{i}]")
            sets = _sets(r.get("set"), f"runs[{i}].set")
            if r.get("name"):
                name = _check_name(str(r["name"]), f"runs[{i}].name")
            else:
                pairs = [_split(s) for s in sets]
                short = short_names([k for k, _ in pairs])
                name = _safe(",".join(f"{short[k]}={_label(v)}" for k, v in pairs)) or "base"
            config = self._file(r.get("config"), f"runs[{i}].config") or self.config
            group = r.get("group")
            if group is not None and not (isinstance(group, str) and group):
                raise ConfigError(f"runs[{i}].group must name a selection group (e.g. "
                                  f"method=houlsby), got {group!r}")
            runs.append(Run(name, "main", self.output / name, config, sets, group=group))
        return runs

    def _check_unique(self) -> None:
        names = [r.name for r in self.main]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"two runs would share the name (and folder) {dupes[0]!r}: give "
                              "listed runs a name, or the grid's keys other short names (names:)")
        bad = [n for n in names if n in RESERVED]
        if bad:
            raise ConfigError(f"a run may not be called {bad[0]!r} (a folder of the suite's own)")

    def _selection_runs(self) -> list[Run]:
        """One run per (group, choice); each main run of the grid learns its group."""
        s = self.select
        # an entry of runs: joins a group only by naming it (runs[].group): it has no grid labels
        listed = [r for r in self.main if not r.labels and r.group]
        if s is None:
            if listed:
                raise ConfigError(f"run {listed[0].name}: group {listed[0].group!r}, but the suite "
                                  "has no 'select' section")
            return []
        groups: dict[str, list[str]] = {}
        for run in self.main:
            if not run.labels or (s.only and not any(matches(run.name, p) for p in s.only)) \
                    or any(matches(run.name, p) for p in s.exclude):
                continue
            parts = [f"{self.short[p]}={run.labels[p]}" for p in s.per]
            run.group = ",".join(parts) or "all"
            if run.group not in groups:
                axes = {a.name: dict(a.choices) for a in self.axes}
                groups[run.group] = [x for p in s.per for x in axes[p][run.labels[p]]]
        for run in listed:
            if run.group not in groups:
                raise ConfigError(f"run {run.name}: group {run.group!r} is not a selection group "
                                  f"(groups: {', '.join(groups) or 'none'})")
        out = []
        for group, per_sets in groups.items():
            for label, sets in s.axis.choices:
                name = "select/" + ",".join(([] if group == "all" else [group])
                                            + [f"{self.short[s.key]}={label}"])
                out.append(Run(name, "select", self.output / name, self.config,
                               per_sets + s.sets + sets, group=group, choice=label))
        return out

    # ---------------------------------------------------------------------------- configs

    def _resolve(self, sets: list[str], run: Run) -> list[str]:
        """``source:NAME`` values -> that source's folder."""
        out = []
        for s in sets:
            key, value = _split(s)
            if isinstance(value, str) and value.startswith(SOURCE_REF):
                src = value[len(SOURCE_REF):]
                found = [r for r in self.sources if r.name == f"sources/{src}"]
                if run.phase == "source":
                    raise ConfigError(f"{key}: a source cannot start from another source ({value})")
                if not found:
                    have = ", ".join(r.name.split("/", 1)[1] for r in self.sources) or "none"
                    raise ConfigError(f"{key}: no source named {src!r} (sources: {have})")
                s = f"{key}={_dump(str(found[0].folder))}"
            out.append(s)
        return out

    def needs(self, run: Run) -> list[str]:
        """The sources (run names) a run starts from: ``source:NAME`` in the value its overrides
        leave on a key (with each candidate of a selection)."""
        variants = ([c for _, c in self.select.axis.choices] if run.group and run.phase == "main"
                    else [None])
        refs = set()
        for selected in variants:
            final = dict(_split(x) for x in self.overrides_of(run, selected))
            refs |= {v[len(SOURCE_REF):] for v in final.values()
                     if isinstance(v, str) and v.startswith(SOURCE_REF)}
        return [r.name for r in self.sources if r.name.split("/", 1)[1] in refs]

    def overrides_of(self, run: Run, selected: list[str] | None = None) -> list[str]:
        selected = run.selected if selected is None else selected
        head = [] if run.phase == "source" else self.set + selected
        return head + run.sets + self.smoke_set + self.cli_set

    def config_of(self, run: Run, selected: list[str] | None = None) -> Config:
        """The run's config, checked: keys and values, its PEFT method and the method's options."""
        sets = self._resolve(self.overrides_of(run, selected), run)
        files = [x.split("=", 1)[1] for x in sets if x.startswith("config=")]
        sets = [x for x in sets if not x.startswith("config=")]
        cfg = load_config(files[-1] if files else run.config, sets)
        if self.smoke:
            self._smoke(cfg, "source" if run.phase == "source" and not self.same_domain
                        else "target")
        method = peft.get(cfg.peft.method)
        parse_options(method.options, cfg.peft.method, cfg.peft.options)
        return cfg

    @property
    def synthetic_dir(self) -> Path:
        return self.output / "synthetic"

    def _smoke(self, cfg: Config, domain: str) -> None:
        """--smoke: the synthetic domain and the tiny model of the run's kind of items."""
        root, kind, enc = self.synthetic_dir, self.synthetic["kind"], cfg.model.item_encoder
        if enc not in ("id", kind):
            raise ConfigError(f"model.item_encoder is {enc}, but smoke.synthetic makes {kind} data")
        cfg.data.path, cfg.data.users_file, cfg.data.items_file = str(root / domain), "users.tsv", "items.tsv"
        if kind == "image":
            cfg.data.images, cfg.data.image_size = "images.lmdb", 0
        if enc == "text":
            cfg.model.pretrained = str(root / "tiny-bert")
        elif enc == "image":  # the MAE runs get a tiny ViT-MAE, the others a tiny ViT
            mae = "mae" in Path(cfg.model.pretrained).name.lower()
            cfg.model.pretrained = str(root / ("tiny-mae" if mae else "tiny-vit"))
        cfg.model.random_init = False
        if not cfg.cache.dir:  # a smoke suite writes nothing outside its output
            cfg.cache.dir = str(root / "cache")
        validate(cfg)

    def prepare(self) -> None:
        """--smoke: write the synthetic domains and tiny models once (``synthetic/ready.json``)."""
        if not self.smoke or (self.synthetic_dir / "ready.json").is_file():
            return
        from ..data.synthetic import (
            make_image_transfer_pair,
            make_transfer_pair,
            write_tiny_bert,
            write_tiny_vit,
        )

        root, sizes = self.synthetic_dir, dict(self.synthetic)
        kind = sizes.pop("kind")
        if kind == "text":
            make_transfer_pair(root, seed=0, **sizes)
            write_tiny_bert(root / "tiny-bert", hidden_size=32, num_layers=2, num_heads=2,
                            intermediate_size=64)
        else:
            make_image_transfer_pair(root, seed=0, **sizes)
            for k in ("vit", "mae"):
                write_tiny_vit(root / f"tiny-{k}", k, image_size=sizes["image_size"])
        write_text_atomic(root / "ready.json", json.dumps(self.synthetic))

    # ------------------------------------------------------------------------------- the plan

    def plan(self, only: list[str] | None = None) -> list[Run]:
        """The runs to do, in order (sources, selection runs, main runs); with ``only`` the runs
        whose names match a pattern and every run they need."""
        everything = self.sources + self.select_runs + self.main
        wanted = {r.name for r in everything}
        if only:
            hit = [r for r in everything if any(matches(r.name, p) for p in only)]
            if not hit:
                names = [r.name for r in self.main]
                raise ConfigError(f"--only {' '.join(only)} matches no run of the suite (runs: "
                                  f"{', '.join(names[:8])}{', ...' if len(names) > 8 else ''})")
            groups = {h.group for h in hit if h.phase == "main" and h.group}
            wanted = {r.name for r in hit} | {r.name for r in self.select_runs if r.group in groups}
        keep = wanted | {n for r in everything if r.name in wanted for n in self.needs(r)}
        return [r for r in everything if r.name in keep]

    def check(self, runs: list[Run]) -> None:
        """Every run's config (a main run of a selection group with each candidate value), or one
        ConfigError naming each run that fails and why."""
        errors = []
        for run in runs:
            options = ([c for _, c in self.select.axis.choices] if run.group and run.phase == "main"
                       else [None])
            # a finished or begun run is kept only if the suite still gives it that config (a
            # main run of a selection group: with one of the candidate values); read once
            saved = saved_config(run.folder) if _state(run) != "new" else None
            changed = []
            for selected in options:
                try:
                    cfg = self.config_of(run, selected)
                    if saved is not None:  # resolves the method's options: may refuse one
                        changed.append(drift(saved, cfg))
                except ConfigError as e:
                    errors.append(f"run {run.name}: {e}")
                    changed = []
                    break
            if changed and all(changed):
                errors.append(_drift_error(run, min(changed, key=len), len(changed) > 1))
        folders = {}
        for run in runs:
            # the parent resolved, not the folder: a main run may be a link to its selection twin
            other = folders.setdefault(run.folder.parent.resolve() / run.folder.name, run.name)
            if other != run.name:
                errors.append(f"runs {other} and {run.name} would write the same folder {run.folder}")
        if errors:
            more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
            raise ConfigError(f"suite {self.path}: {len(errors)} run(s) do not check out:\n  "
                              + "\n  ".join(errors[:20]) + more)


def saved_config(folder: Path) -> dict | str | None:
    """A run folder's config.yaml as a mapping; None without one; a string saying what is wrong
    with it (``drift`` reports it)."""
    try:
        return read_run_config(folder)
    except ConfigError as e:
        return str(e)


def drift(saved: dict | str | None, cfg: Config) -> list[str]:
    """How the config a run folder was made with (``saved_config``) differs from ``cfg``, the
    config the suite gives that run now: ``key old -> new`` for each key that changes what the
    run computes. ``cfg``'s PEFT options are compared as the build records them (short forms
    resolved, the method's defaults filled in). Not drift: a key ``cfg`` leaves out that the build
    filled in, a key added to the library after the run (at its default), a source's shape the
    run took (``SOURCE_SHAPES``, left at the default), ``NOT_COMPUTED``, and a ``MOVABLE`` path
    whose last part is the same."""
    if saved is None:
        return []
    if isinstance(saved, str):
        return [saved]
    defaults = Config().to_dict()
    return [change_text(key, old, new) for key, old, new in config_changes(saved, cfg)
            if not (new is MISSING or key in NOT_COMPUTED
                    or (key in SOURCE_SHAPES and new == dotted_get(defaults, key))
                    or (key in MOVABLE and isinstance(old, str) and isinstance(new, str)
                        and Path(old).name == Path(new).name))]


def _drift_error(run: Run, changed: list[str], candidates: bool = False) -> str:
    what = "with any candidate of its selection" if candidates else "now"
    return (f"run {run.name}: {run.folder} holds a run made with another config than the suite "
            f"gives it {what} ({'; '.join(changed[:4])}{'; ...' if len(changed) > 4 else ''}): "
            "delete the folder to run it anew, or undo the change")


# --------------------------------------------------------------------------------- running it

def _metric(metrics: dict, path: str):
    node = metrics
    for part in path.split(".", 1) if "." in path else [path]:
        if not isinstance(node, dict) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node


def _state(run: Run) -> str:
    if (run.folder / "metrics.json").is_file():
        return "done"
    if (run.folder / "metrics.jsonl").is_file() or (run.folder / "checkpoints" / "latest").exists():
        return "resume"
    return "new"


def _devices(jobs: int) -> list[dict]:
    """The environment of each of ``jobs`` workers: one GPU each, or a share of the CPU threads."""
    import torch

    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    env = [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for _ in range(jobs)]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = ([d for d in visible.split(",") if d.strip()] if visible is not None
            else [str(i) for i in range(torch.cuda.device_count())])
    if gpus and torch.cuda.is_available():
        if jobs > len(gpus):
            raise ConfigError(f"--jobs {jobs}: one GPU per worker, but {len(gpus)} are visible")
        for e, gpu in zip(env, gpus):
            e["CUDA_VISIBLE_DEVICES"] = gpu.strip()
    return env


class Runner:
    def __init__(self, suite: Suite, jobs: int = 1, echo=None):
        if jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {jobs}")
        self.suite, self.jobs = suite, jobs
        self.echo = echo or (lambda text: print(text, flush=True))
        self.runs: list[Run] = []    # this invocation's
        self.everything = suite.sources + suite.select_runs + suite.main
        self.selection: dict = {}
        self.lock = threading.Lock()
        self.done = 0
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S")

    # ----------------------------------------------------------------------- report
    def report(self) -> dict:
        s = self.suite
        return {"suite": str(s.path), "name": s.name, "description": s.description,
                "smoke": s.smoke, "output": str(s.output), "jobs": self.jobs,
                "started": self.started, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "selection": self.selection,
                "runs": [{"name": r.name, "phase": r.phase, "folder": str(r.folder),
                          "status": r.status, "group": r.group, "choice": r.choice,
                          "selected": self.selection.get(r.group, {}).get("choice")
                          if r.phase == "main" and r.group else None,
                          "overrides": r.overrides, "seconds": r.seconds, "error": r.error,
                          "metrics": r.metrics} for r in self.everything]}

    def _records(self) -> dict:
        """Each run's record in the suite.json a former `suite run` wrote ({} where none is)."""
        try:
            last = json.loads((self.suite.output / "suite.json").read_text(encoding="utf-8"))
            return {r["name"]: r for r in last["runs"] if isinstance(r, dict) and "name" in r}
        except (OSError, ValueError, KeyError, TypeError):
            return {}  # none yet, or not one this runner wrote: every record from the folders

    def _save(self) -> None:
        write_text_atomic(self.suite.output / "suite.json", json.dumps(self.report(), indent=1))

    def _say(self, run: Run, text: str) -> None:
        with self.lock:
            self.done += 1
            self.echo(f"[{self.done}/{len(self.runs)}] {run.name}: {text}")
            self._save()

    # ----------------------------------------------------------------------- one run
    def _one(self, run: Run, slot: int, env: list[dict]) -> None:
        s = self.suite
        missing = [n for n in s.needs(run) if next(r for r in self.runs if r.name == n).status not in DONE]
        if missing:
            run.status, run.error = "blocked", f"needs {', '.join(missing)}, which did not finish"
            return self._say(run, f"blocked: {run.error}")
        if run.phase == "main" and run.group:
            if run.group not in self.selection:
                run.status, run.error = "blocked", f"no value selected for {run.group}"
                return self._say(run, f"blocked: {run.error}")
            run.selected = dict(s.select.axis.choices)[self.selection[run.group]["choice"]]
        t0 = time.time()
        try:
            cfg = s.config_of(run)
            run.overrides = s._resolve(s.overrides_of(run), run)
            state = _state(run)
            changed = drift(saved_config(run.folder), cfg) if state != "new" else []
            if changed:  # with the value selected now (check() allowed any candidate)
                raise ConfigError(_drift_error(run, changed))
            twin = self._twin(run, cfg) if state == "new" else None
            if twin is not None:
                # the winning selection run has this very config: the same run, not trained twice
                run.folder.parent.mkdir(parents=True, exist_ok=True)
                run.folder.symlink_to(os.path.relpath(twin.folder, run.folder.parent),
                                      target_is_directory=True)
                run.status, run.metrics = "reused", twin.metrics
                return self._say(run, f"the same config as {twin.name}: its run, linked "
                                      f"({run.folder} -> {twin.folder})")
            if state == "done":
                run.status = "skipped"
                run.metrics = json.loads((run.folder / "metrics.json").read_text(encoding="utf-8"))
                return self._say(run, "finished before, skipped")
            run.status = "running"
            if self.jobs == 1:
                metrics = train(cfg, run.folder, resume=state == "resume")
            else:
                metrics = self._spawn(run, cfg, state == "resume", env[slot])
            run.metrics = metrics if isinstance(metrics, dict) else json.loads(
                (run.folder / "metrics.json").read_text(encoding="utf-8"))
            run.status = "resumed" if state == "resume" else "trained"
        except Exception as e:  # noqa: BLE001 (one run failing does not stop the others)
            run.status, run.error = "failed", str(e) or type(e).__name__
            if not isinstance(e, Adapter4RecError):
                traceback.print_exc()
            run.seconds = round(time.time() - t0, 1)
            return self._say(run, f"FAILED: {run.error}")
        run.seconds = round(time.time() - t0, 1)
        v = run.metrics.get("valid", {}).get("NDCG@10")
        t = run.metrics.get("test", {}).get("NDCG@10")
        scores = (f", valid NDCG@10 {v:.4f}, test NDCG@10 {t:.4f}"
                  if isinstance(v, float) and isinstance(t, float) else "")
        self._say(run, f"{run.status} in {run.seconds:.3g} s{scores} ({run.folder})")

    def _twin(self, run: Run, cfg: Config) -> Run | None:
        """The finished winning selection run of ``run``'s group whose config equals ``cfg``."""
        if run.phase != "main" or not run.group or run.group not in self.selection:
            return None
        chosen = self.selection[run.group]["choice"]
        for r in self.suite.select_runs:
            if (r.group == run.group and r.choice == chosen and r.status in DONE and r.metrics
                    and (r.folder / "metrics.json").is_file()
                    and self.suite.config_of(r).to_dict() == cfg.to_dict()):
                return r
        return None

    def _spawn(self, run: Run, cfg: Config, resume: bool, env: dict) -> None:
        """Train in a worker process (``python -m adapter4rec.experiments.suite``) on its device."""
        work = self.suite.output / ".suite"
        cfg_file, log_file = work / "configs" / f"{run.name}.yaml", work / "logs" / f"{run.name}.log"
        cfg_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        save_config(cfg, cfg_file)
        cmd = [sys.executable, "-m", "adapter4rec.experiments.suite", str(cfg_file), str(run.folder)]
        with open(log_file, "w", encoding="utf-8") as log:
            rc = subprocess.run(cmd + (["--resume"] if resume else []), stdout=log, check=False,
                                stderr=subprocess.STDOUT, env={**os.environ, **env}).returncode
        if rc != 0:
            lines = [x for x in log_file.read_text(encoding="utf-8", errors="replace").splitlines()
                     if x.strip()]
            raise Adapter4RecError(f"{lines[-1].strip() if lines else f'exit status {rc}'} "
                                   f"(worker log: {log_file})")

    def _phase(self, runs: list[Run], env: list[dict]) -> None:
        if self.jobs == 1:
            for run in runs:
                self._one(run, 0, env)
            return
        queue = list(runs)

        def work(slot):
            while True:
                with self.lock:
                    if not queue:
                        return
                    run = queue.pop(0)
                self._one(run, slot, env)

        threads = [threading.Thread(target=work, args=(i,), daemon=True)
                   for i in range(min(self.jobs, len(runs)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _choose(self, group: str, runs: list[Run]) -> None:
        sel = self.suite.select
        mine = [r for r in runs if r.group == group]
        if any(r.status not in DONE for r in mine):
            self.echo(f"select {group}: not chosen, {sum(r.status not in DONE for r in mine)} of "
                      f"{len(mine)} selection runs did not finish")
            return
        values = {}
        for r in mine:
            try:
                v = _metric(r.metrics, sel.metric)
            except KeyError:
                self.echo(f"select {group}: not chosen, select.metric {sel.metric} is not in "
                          f"{r.folder / 'metrics.json'}")
                return
            values[r.choice] = v if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf
        best = max(values, key=lambda label: values[label])  # a tie: the first value listed
        self.selection[group] = {"key": sel.key, "choice": best, "metric": sel.metric,
                                 "values": values}
        short = self.suite.short[sel.key]
        self.echo(f"select {group}: {short}={best} ({sel.metric} {values[best]:.4f}; "
                  + ", ".join(f"{k} {v:.4f}" for k, v in values.items()) + ")")

    # ----------------------------------------------------------------------- all of it
    def run(self, only: list[str] | None = None, dry_run: bool = False) -> dict:
        s = self.suite
        self.runs = s.plan(only)
        s.check(self.runs)  # every config, method and option, before the first run starts
        planned = {id(r) for r in self.runs}
        before = self._records()
        for r in self.everything:  # outside --only: as the folder stands
            if id(r) in planned:
                continue
            done = (r.folder / "metrics.json").is_file()
            r.status = "skipped" if done else "not run"
            if done:
                r.metrics = json.loads((r.folder / "metrics.json").read_text(encoding="utf-8"))
            # what the `suite run` that last ran it recorded (how long it took, its overrides, why
            # it failed), kept while its folder still agrees: runs go one --only at a time
            last = before.get(r.name, {})
            if last.get("folder") == str(r.folder) and \
                    (last.get("status") in DONE) == done and last.get("status") not in (None, "running"):
                r.status, r.error = last["status"], last.get("error")
                r.seconds, r.overrides = last.get("seconds"), list(last.get("overrides") or [])
        if dry_run:
            self._print_plan()
            return self.report()
        env = _devices(self.jobs) if self.jobs > 1 else [{}]
        s.output.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(s.output).acquire()  # one `suite run` per output folder at a time
        try:
            self._save()
            s.prepare()
            self._phase([r for r in self.runs if r.phase == "source"], env)
            select = [r for r in self.runs if r.phase == "select"]
            self._phase(select, env)
            for group in dict.fromkeys(r.group for r in self.runs if r.phase == "main" and r.group):
                self._choose(group, select)
            self._phase([r for r in self.runs if r.phase == "main"], env)
        finally:
            self._save()
            lock.release()
        rows = []
        for r in self.runs:
            if r.metrics:
                rows.append(_row(r.name, r.metrics, r.folder))
            else:
                rows.append({**dict.fromkeys(COLUMNS), "method": r.name,
                             "run": r.status.upper() + (f": {r.error}" if r.error else "")})
        self.echo(format_table(rows))
        failed = [r for r in self.runs if r.status not in DONE]
        if failed:
            raise Adapter4RecError(f"{len(failed)} of {len(self.runs)} runs did not finish ("
                                   + ", ".join(f"{r.name}: {r.status}" for r in failed[:5])
                                   + ("..." if len(failed) > 5 else "")
                                   + f"); run the suite again to resume them ({s.output / 'suite.json'})")
        return self.report()

    def _print_plan(self) -> None:
        s = self.suite
        rows = [("run", "phase", "state", "folder", "overrides")]
        for r in self.runs:
            own = list(r.sets)
            if r.phase == "main" and r.group:
                own.append(f"{s.select.key}=<selected for {r.group}>")
            rows.append((r.name, r.phase, _state(r), str(r.folder), " ".join(own) or "-"))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            self.echo("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4])
        counts = {p: sum(r.phase == p for r in self.runs) for p in ("source", "select", "main")}
        self.echo(f"{len(self.runs)} runs ({counts['source']} source, {counts['select']} selection, "
                  f"{counts['main']} main) into {s.output}; every config checks out"
                  + (" (smoke)" if s.smoke else ""))


def run_suite(path: str | Path, only: list[str] | None = None, dry_run: bool = False,
              smoke: bool = False, jobs: int = 1, output: str | Path | None = None,
              overrides: list[str] | None = None, echo=None) -> dict:
    """Run (or with ``dry_run`` check and list) the suite in ``path``; returns the report that
    ``<output>/suite.json`` holds. Raises ``Adapter4RecError`` when a run did not finish."""
    suite = Suite(path, smoke=smoke, output=output, overrides=overrides)
    return Runner(suite, jobs=jobs, echo=echo).run(only, dry_run)


def _worker(argv: list[str]) -> int:
    """A ``--jobs`` worker: train one run from its planned config file."""
    cfg_file, folder = argv[0], argv[1]
    try:
        train(load_config(cfg_file), folder, resume="--resume" in argv[2:])
    except Adapter4RecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))

"""`adapter4rec report`: tables, paired confidence intervals and plots over finished runs.

    report(["runs/study"], markdown="study.md", csv="study.csv", plots="runs/plots")

Every folder holding a ``metrics.json`` under the paths given is a run. What tells runs apart is
found by comparing their resolved ``config.yaml`` files: the *varied keys* are the dotted keys
whose values differ among the runs (a ``peft.options.*`` key only when it differs among runs of the
same method; keys that do not change a result, such as ``train.progress`` or
``eval.batch_size``, never count). ``train.init_from`` is replaced by what it means: ``init``
(``transfer`` | ``scratch``), ``source_data`` (the source run's data folder) and
``source_fraction`` (the source run's ``data.user_fraction``). Runs that differ only in
``train.seed`` are one *variant*, reported as mean ± std over its seeds.

Each variant has a label: its method, then each varied key whose value is not the default (the
method's own default for a PEFT option), e.g. ``houlsby towers=user insertion=parallel`` or
``full scratch``. Two variants never share a label.

Tables (printed as Markdown, and written with ``markdown=``): one row per run, one per variant,
the paired bootstrap confidence intervals, and one variant table per folder group (the runs of
``STUDY/rq1/...`` and ``STUDY/rq2/...``, or of each path given, are separate groups).
``csv="F.csv"`` writes the run table there and ``F.variants.csv``, ``F.pairs.csv`` beside it.
``plots=DIR`` writes ``tradeoff.png`` (test NDCG@10 against trainable parameters, log x, one
colour per method), ``scaling_target.png`` / ``scaling_source.png`` (the metric against the
target / source user fraction, one line per variant, scratch included; only when that fraction
varies), ``resources.png`` (epoch time and peak memory per variant), and one
``tradeoff_<group>.png`` per folder group when there are several. ``plot=F.png`` writes the
trade-off plot alone. docs/report.md describes the columns and the pairs.
"""
from __future__ import annotations

import fnmatch
import json
import math
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..config import Config
from ..errors import Adapter4RecError
from ..peft import registry
from ..pipeline import start_precisions
from ..training.optim import LR_KEYS

METHOD, SEED, OPTIONS = "peft.method", "train.seed", "peft.options."
FRACTION_SEED = "data.fraction_seed"
SEEDS = (SEED, FRACTION_SEED)  # runs that differ only in these are seeds of one variant
INIT, SOURCE_DATA, SOURCE_FRACTION = "init", "source_data", "source_fraction"
FRACTION = "data.user_fraction"
OBJECTIVE = "train.objective"
AMP = "train.amp"  # "auto" is replaced by what it resolved to (run.json), where recorded
# the optimiser role each learning rate sets (run.json param_groups lists the roles that train)
LR_ROLE = {f"train.{key}": role for role, key in LR_KEYS.items()}
DERIVED = (INIT, SOURCE_DATA, SOURCE_FRACTION)
# keys a run may lack (written by an older adapter4rec), with the value they then mean
DEFAULTS = {FRACTION: 1.0, FRACTION_SEED: 0}
# keys that never change a result: they never make runs differ
PLUMBING = frozenset({
    "train.init_from",  # replaced by init, source_data, source_fraction
    "train.progress", "train.tensorboard", "train.num_workers", "train.checkpoint_every",
    "train.keep_latest", "train.best_optimizer", "train.compile",
    "eval.batch_size", "eval.item_batch_size",
    "cache.dir", "cache.batch_size", "cache.rebuild", "cache.release_backbone", "cache.enabled"})
# keys holding a path: shown by their last (distinguishing) components
PATHS = frozenset({"data.path", "data.images", "model.pretrained", "model.image_pretrained",
                   SOURCE_DATA})
RANKS_FILE, RESOURCES_FILE = "ranks.npz", "resources.json"
REFERENCES = ("popularity",)  # peft.method of the baselines that train nothing (adapter4rec popularity)
PAIR_WHY = ("--pair", "vs full", "transfer vs scratch")


class NoRuns(Adapter4RecError):
    """No finished run under the paths given."""


class _Missing:
    """A key a run's config does not have (another method's option)."""

    def __repr__(self) -> str:
        return "—"

    def __lt__(self, other) -> bool:
        return True


MISSING = _Missing()


# ------------------------------------------------------------------------------------ reading

@dataclass
class RunInfo:
    """One run folder: its flat config (dotted keys, derived keys added), metrics and records."""

    path: Path
    name: str
    group: str
    config: dict
    metrics: dict
    epochs: list
    resources: dict
    data_digest: str | None
    source: Path | None = None  # the source run folder (train.init_from), when found
    is_source: bool = False     # another run of the report starts from this one
    lr_roles: frozenset | None = None  # the optimiser's roles (run.json param_groups), when recorded

    @property
    def method(self) -> str:
        return str(self.config.get(METHOD, "?"))

    @property
    def seed(self):
        return self.config.get(SEED)


def _hashable(v):
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((str(k), _hashable(x)) for k, x in v.items()))
    return v


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become tuples (the values are compared and grouped).
    An empty mapping (the options of a method without any) has no keys."""
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = _hashable(v)
    return out


def _read_json(path: Path, what: str, required: bool = False):
    if not path.is_file():
        if required:
            raise Adapter4RecError(f"{path}: missing")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # a run still writing it, or a cut-off copy
        if required:
            raise Adapter4RecError(f"{path}: not valid JSON ({e}); re-run or remove that run") from None
        return None


def _read_config(run: Path) -> dict:
    p = run / "config.yaml"
    if not p.is_file():
        return {}
    try:
        cfg = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise Adapter4RecError(f"{p}: not valid YAML ({e})") from None
    if not isinstance(cfg, dict):
        raise Adapter4RecError(f"{p}: not a config written by adapter4rec train")
    return cfg


def _epochs(run: Path) -> list[dict]:
    p = run / "metrics.jsonl"
    out = []
    if p.is_file():
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut by a kill
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def source_folder(init_from: str) -> Path | None:
    """The run folder of a ``train.init_from`` (a run folder, a checkpoint folder in it, or a
    weights file in one), or None."""
    p = Path(init_from)
    for cand in [p, *p.parents][:4]:
        if (cand / "config.yaml").is_file():
            return cand
    return None


def _add_derived(flat: dict) -> Path | None:
    """Replace train.init_from by init / source_data / source_fraction (in place)."""
    for k, v in DEFAULTS.items():
        flat.setdefault(k, v)
    init_from = flat.get("train.init_from") or ""
    if flat.get(METHOD) in REFERENCES:  # a ranking that trains nothing starts from nothing either
        flat[INIT] = flat[AMP] = MISSING  # and computes in no precision
        return None
    if not init_from:
        flat[INIT] = "scratch"
        return None
    flat[INIT] = "transfer"
    src = source_folder(str(init_from))
    if src is None:
        parts = [p for p in Path(str(init_from)).parts
                 if p not in ("checkpoints", "best", "latest", "model.safetensors")]
        flat[SOURCE_DATA] = parts[-1] if parts else str(init_from)
        flat[SOURCE_FRACTION] = MISSING
        return None
    cfg = flatten(_read_config(src))
    flat[SOURCE_DATA] = cfg.get("data.path", str(src))
    flat[SOURCE_FRACTION] = cfg.get(FRACTION, DEFAULTS[FRACTION])
    return src.resolve()


def _is_selection_run(run: Path, base: Path) -> bool:
    """A suite's selection runs (``<suite>/select/...``) only chose a value for the main runs, which
    repeat the winner: reported on their own only when asked for (``report <suite>/select``)."""
    for parent in run.parents:
        if parent == base.parent or parent == parent.parent:
            return False
        if parent.name == "select" and (parent.parent / "suite.json").is_file() \
                and base.resolve() != parent.resolve() and parent.resolve() not in base.resolve().parents:
            return True
    return False


def collect_runs(paths: list[str]) -> list[RunInfo]:
    """Every run folder under ``paths`` (each path a run or a folder of runs, at any depth).

    A run's group is the folder holding it, relative to the one that holds them all: the runs of
    STUDY/rq1/... and STUDY/rq2/... are groups rq1 and rq2, and runs side by side (a suite's
    ``out/method=*``) are one group."""
    runs, seen = [], set()
    for p in paths:
        base = Path(p)
        for m in sorted(base.rglob("metrics.json")):
            run = m.parent
            if run.resolve() in seen or _is_selection_run(run, base):
                continue
            seen.add(run.resolve())
            res = _read_json(m, "metrics.json", required=True)
            if not isinstance(res, dict) or not isinstance(res.get("valid"), dict) \
                    or not isinstance(res.get("test"), dict):
                raise Adapter4RecError(f"{m}: not a metrics.json written by adapter4rec train")
            rel = run.relative_to(base)
            flat = flatten(_read_config(run))
            src = _add_derived(flat)
            info = _read_json(run / "run.json", "run.json")
            resolved = "+".join(sorted(set(start_precisions(info))))  # "bf16+fp32" if they differ
            if flat.get(AMP) == "auto" and resolved:  # what auto was on its machine(s)
                flat[AMP] = resolved
            digest = ((info or {}).get("fingerprints") or {}).get("data") if isinstance(info, dict) else None
            resources = _read_json(run / RESOURCES_FILE, RESOURCES_FILE)
            groups = (info or {}).get("param_groups") if isinstance(info, dict) else None
            runs.append(RunInfo(run, run.name if str(rel) == "." else rel.as_posix(), "", flat,
                                res, _epochs(run), resources if isinstance(resources, dict) else {},
                                digest, src, lr_roles=frozenset(groups)
                                if isinstance(groups, dict) else None))
    if not runs:
        raise NoRuns(f"no metrics.json under {', '.join(map(str, paths))}")
    sources = {r.source for r in runs if r.source is not None}
    for r in runs:
        r.is_source = r.path.resolve() in sources
    targets = [r for r in runs if not r.is_source] or runs  # the groups of the compared runs
    top = os.path.commonpath([str(r.path.resolve().parent) for r in targets])
    for r in runs:
        rel = os.path.relpath(r.path.resolve().parent, top)
        r.group = "" if rel == "." or rel.startswith("..") else Path(rel).as_posix()
    return runs


# ------------------------------------------------------------------------------- varied keys

def _key_order(k: str) -> tuple:
    if k == METHOD:
        return (0,)
    if k in DERIVED:
        return (1, DERIVED.index(k))
    if k in SEEDS:
        return (9, SEEDS.index(k))
    for i, pre in enumerate(("data.", OPTIONS, "train.", "model.", "eval.", "cache.")):
        if k.startswith(pre):
            return (2 + i,)
    return (8,)


def varied_keys(runs: list[RunInfo]) -> list[str]:
    """The keys whose values differ among ``runs`` (dotted, in a fixed order: method, init and
    source, data, PEFT options, train, model, ..., seed last)."""
    keys = list(dict.fromkeys(k for r in runs for k in r.config if k not in PLUMBING))
    out = []
    for k in keys:
        if k.startswith(OPTIONS):  # only within one method: methods have their own options
            by_method = defaultdict(set)
            for r in runs:
                if k in r.config:
                    by_method[r.method].add(r.config[k])
            if any(len(v) > 1 for v in by_method.values()):
                out.append(k)
        elif k == AMP:  # a reference ranking computes in no precision: it never varies it
            if len({r.config.get(k) for r in runs if r.config.get(k, MISSING) is not MISSING}) > 1:
                out.append(k)
        elif len({r.config.get(k, MISSING) for r in runs}) > 1:
            out.append(k)
    return sorted(out, key=lambda k: (_key_order(k), keys.index(k)))


def short_names(keys: list[str]) -> dict[str, str]:
    """A column name per key: its last part (``towers``), or more of it where two would clash."""
    last = {k: k.rsplit(".", 1)[-1] for k in keys}
    n = Counter(last.values())
    return {k: last[k] if n[last[k]] == 1 else k.removeprefix("peft.") for k in keys}


def _trains_nothing(key: str, run: RunInfo) -> bool:
    """A learning rate of no parameter of the run (full's lr_peft, frozen's lr_backbone): it names
    nothing. Runs from before run.json recorded its optimiser groups show every rate."""
    return key in LR_ROLE and run.lr_roles is not None and LR_ROLE[key] not in run.lr_roles


def fmt_value(v) -> str:
    if v is MISSING:
        return "—"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        return "+".join(fmt_value(x) for x in v) if v else "none"
    return str(v)


def _path_names(values) -> dict:
    """Each distinct path shown by its shortest trailing part that tells it from the others."""
    vals = sorted({v for v in values if isinstance(v, str)})
    parts = {v: Path(v).parts or (v,) for v in vals}
    out = {}
    for v in vals:
        for n in range(1, len(parts[v]) + 1):
            tail = parts[v][-n:]
            if sum(parts[w][-n:] == tail for w in vals) == 1:
                break
        out[v] = str(Path(*tail)) or v
    return out


_CONFIG_DEFAULTS = None


def _default(key: str, method: str):
    """The value a key has when nobody set it: the method's option default, the config default."""
    global _CONFIG_DEFAULTS
    if key.startswith(OPTIONS):
        try:
            return _hashable(registry.defaults(method).get(key[len(OPTIONS):], MISSING))
        except Adapter4RecError:  # a method this version does not know
            return MISSING
    if key == INIT:
        return "transfer"
    if key == SOURCE_FRACTION:
        return DEFAULTS[FRACTION]
    if _CONFIG_DEFAULTS is None:
        _CONFIG_DEFAULTS = {**flatten(Config().to_dict()), **DEFAULTS}
    return _CONFIG_DEFAULTS.get(key, MISSING)


# ----------------------------------------------------------------------------------- variants

@dataclass
class Variant:
    """Runs that differ only in their seed."""

    values: dict          # varied key (seed aside) -> value
    runs: list[RunInfo]
    group: str
    label: str = ""

    @property
    def method(self) -> str:
        return self.runs[0].method

    @property
    def is_source(self) -> bool:
        return all(r.is_source for r in self.runs)


def make_variants(runs: list[RunInfo], keys: list[str], by_group: bool) -> list[Variant]:
    keys = [k for k in keys if k not in SEEDS]
    found: dict[tuple, Variant] = {}
    for r in runs:
        values = {k: r.config.get(k, MISSING) for k in keys}
        key = (r.group if by_group else "", *(values[k] for k in keys))
        if key not in found:
            found[key] = Variant(values, [], r.group if by_group else "")
        found[key].runs.append(r)
    variants = list(found.values())
    for v, label in zip(variants, labels(variants, keys)):
        v.label = label
    order = {m: i for i, m in enumerate(registry.available())}
    variants.sort(key=lambda v: (v.is_source, v.group, order.get(v.method, len(order)), v.method,
                                 v.values.get(INIT, "") == "scratch", v.label))
    return variants


def labels(variants: list[Variant], keys: list[str]) -> list[str]:
    """Method, then each varied key whose value is not its default (``scratch`` for init). Two
    variants differ in some key, and at least one of them then shows it: labels are distinct."""
    shown = [k for k in keys if k != METHOD and k not in SEEDS]
    names = short_names(shown)
    # a path key is named only where variants hold two paths (not merely a path and none)
    many = {k for k in shown if k in PATHS
            and len({v.values.get(k) for v in variants if isinstance(v.values.get(k), str)}) > 1}
    paths = _path_names(v.values.get(k) for v in variants for k in many)
    out = []
    for v in variants:
        parts = [v.method]
        # no source: scratch, or a reference ranking (which has no init at all)
        scratch = v.runs[0].config.get(INIT) in ("scratch", MISSING)
        for k in shown:
            val = v.values.get(k, MISSING)
            if k == INIT:
                if val == "scratch":
                    parts.append("scratch")
                continue
            if k in PATHS and isinstance(val, str):
                if k in many:
                    parts.append(f"{names[k]}={paths.get(val, val)}")
                continue
            if val is MISSING and (k.startswith(OPTIONS)  # another method's option
                                   or (k in DERIVED and scratch)  # no source
                                   or k == AMP):  # a reference ranking: no precision
                continue
            if _trains_nothing(k, v.runs[0]):
                continue  # a learning rate of no parameter (full's lr_peft): it names nothing
            if val == _default(k, v.method):
                continue
            parts.append(f"{names[k]}={fmt_value(val)}")
        out.append(" ".join(parts))
    # variants that differ only in their folder group, or in what the rules above leave out
    clash = defaultdict(list)
    for i, lab in enumerate(out):
        clash[lab].append(i)
    for lab, idx in clash.items():
        if len(idx) < 2:
            continue
        diff = [k for k in shown if len({variants[i].values.get(k, MISSING) for i in idx}) > 1]
        for i in idx:
            extra = [f"{names[k]}={fmt_value(variants[i].values.get(k, MISSING))}" for k in diff]
            if not diff and variants[i].group:
                extra = [f"[{variants[i].group}]"]
            out[i] = " ".join([lab, *extra])
    return out


# -------------------------------------------------------------------------------------- tables

def _metric_columns(runs: list[RunInfo]) -> list[str]:
    def order(name: str):
        split, m = name.split("_", 1)
        kind, _, cut = m.partition("@")
        return (split != "test", int(cut) if cut.isdigit() else 0, kind != "HR", kind)
    cols = {f"{split}_{m}" for r in runs for split in ("test", "valid")
            for m in r.metrics.get(split, {}) if "@" in m}
    return sorted(cols, key=order)


def _epoch_seconds(r: RunInfo):
    secs = [e["epoch_seconds"] for e in r.epochs if isinstance(e.get("epoch_seconds"), (int, float))]
    if not secs:
        secs = [e["epoch_seconds"] for e in r.resources.get("epochs", [])
                if isinstance(e, dict) and isinstance(e.get("epoch_seconds"), (int, float))]
    return float(np.mean(secs)) if secs else None


def _shown(runs: list[RunInfo], keys: list[str]):
    """(key, value) -> its table cell: a path by the tail that tells it from the others."""
    paths = _path_names(r.config.get(k) for r in runs for k in keys if k in PATHS)

    def show(k, v):
        return paths.get(v, v) if k in PATHS and isinstance(v, str) else fmt_value(v)
    return show


def _run_row(r: RunInfo, keys: list[str], names: dict, metric_cols: list[str], show=None) -> dict:
    m = r.metrics
    trainable, total = m.get("trainable_params"), m.get("total_params")
    row = {"run": str(r.path), "method": r.method}
    show = show or (lambda k, v: fmt_value(v))
    for k in keys:
        if k not in (METHOD, SEED):
            row[names[k]] = show(k, MISSING if _trains_nothing(k, r) else r.config.get(k, MISSING))
    row.update({"seed": r.seed, "best_epoch": m.get("best_epoch"), "trainable": trainable,
                "trainable_%": 100.0 * trainable / total if trainable is not None and total else None,
                "adapter_mb": m.get("checkpoint_mb")})
    for c in metric_cols:
        split, name = c.split("_", 1)
        row[c] = m.get(split, {}).get(name)
    row["epoch_s"] = _epoch_seconds(r)
    row["peak_rss_mb"] = r.resources.get("peak_rss_mb")
    row["peak_gpu_mb"] = r.resources.get("peak_cuda_mb")
    return row


def run_table(runs: list[RunInfo], keys: list[str]) -> pd.DataFrame:
    names = short_names([k for k in keys if k not in (METHOD, SEED)])
    cols, show = _metric_columns(runs), _shown(runs, keys)
    df = pd.DataFrame([_run_row(r, keys, names, cols, show) for r in runs])
    return df.drop(columns=["peak_gpu_mb"]) if df["peak_gpu_mb"].isna().all() else df


_MEANS = ("trainable_%", "adapter_mb", "epoch_s")


def variant_table(variants: list[Variant], keys: list[str], with_group: bool) -> pd.DataFrame:
    """One row per variant: its varied values, n seeds, and mean (and std) of every number."""
    keys = [k for k in keys if k != FRACTION_SEED]
    names = short_names([k for k in keys if k not in (METHOD, SEED)])
    runs = [r for v in variants for r in v.runs]
    metric_cols, show = _metric_columns(runs), _shown(runs, keys)
    rows = []
    for v in variants:
        per = pd.DataFrame([_run_row(r, keys, names, metric_cols) for r in v.runs])
        row = {"label": v.label}
        if with_group:
            row["group"] = v.group
        row["method"] = v.method
        for k in keys:
            if k not in (METHOD, SEED):
                row[names[k]] = show(k, MISSING if _trains_nothing(k, v.runs[0])
                                     else v.values.get(k, MISSING))
        seeds = [r.seed for r in v.runs]
        row.update({"n": len(v.runs), "seeds": ",".join(fmt_value(s) for s in seeds),
                    "trainable": per["trainable"].dropna().iloc[0]
                    if per["trainable"].notna().any() else None})
        for c in ("trainable_%", "adapter_mb", *metric_cols, "epoch_s"):
            vals = pd.to_numeric(per[c], errors="coerce").dropna() if c in per else pd.Series([], dtype=float)
            row[c] = float(vals.mean()) if len(vals) else None
            if c not in _MEANS:
                row[f"{c}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else None
        for c in ("peak_rss_mb", "peak_gpu_mb"):  # the largest over the seeds
            vals = pd.to_numeric(per[c], errors="coerce").dropna()
            row[c] = float(vals.max()) if len(vals) else None
        rows.append(row)
    df = pd.DataFrame(rows)
    return df.drop(columns=[c for c in ("peak_gpu_mb",) if c in df and df[c].isna().all()])


# ---------------------------------------------------------------------------- paired bootstrap

def user_ndcg(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """Per-user NDCG@k of the target's rank (inf: never a hit, 0)."""
    r = np.asarray(ranks, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(r <= k, 1.0 / np.log2(np.minimum(r, 1e12) + 1.0), 0.0)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, resamples: int = 1000,
                     seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a - b`` over users and its 95% percentile interval over ``resamples`` resamples
    of the users with replacement (the same users for both: a paired test)."""
    if resamples < 1:
        raise Adapter4RecError(f"paired bootstrap: resamples must be at least 1, got {resamples}")
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or not len(d):
        raise Adapter4RecError("paired bootstrap: needs two equally long, non-empty score vectors")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    step = max(1, 2 ** 22 // len(d))  # bounded memory: at most 4M indices at a time
    for s in range(0, resamples, step):
        c = min(step, resamples - s)
        means[s:s + c] = d[rng.integers(0, len(d), size=(c, len(d)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


def _variant_scores(v: Variant, k: int):
    """(per-user NDCG@k averaged over the variant's seeds, data digests) or (None, why not)."""
    scores = []
    for r in v.runs:
        f = r.path / RANKS_FILE
        if not f.is_file():
            return None, f"{r.name} has no {RANKS_FILE} (trained before adapter4rec saved per-user ranks)"
        try:
            with np.load(f) as z:
                test, epoch = np.array(z["test"]), int(z["epoch"])
        except (OSError, ValueError, KeyError) as e:
            return None, f"{f}: unreadable ({e})"
        if r.metrics.get("best_epoch") is not None and epoch != r.metrics["best_epoch"]:
            return None, (f"{f} holds epoch {epoch}, metrics.json's best epoch is "
                          f"{r.metrics['best_epoch']} (the run was cut short; resume it)")
        if scores and len(test) != len(scores[0]):
            return None, f"{v.label}: its seeds ranked different numbers of test users"
        scores.append(user_ndcg(test, k))
    return np.mean(scores, axis=0), None


def _same_users(a: Variant, b: Variant):
    digests = {r.data_digest for r in a.runs + b.runs}
    if len(digests) > 1 and None not in digests:
        return "their data differ (run.json's data fingerprints), so their test users do too"
    return None


def _matches(v: Variant, pattern: str) -> bool:
    if v.label == pattern or fnmatch.fnmatchcase(v.label, pattern):
        return True
    return any(fnmatch.fnmatchcase(s, pattern) for r in v.runs
               for s in (r.name, r.path.name, str(r.path)))


def explicit_pairs(variants: list[Variant], specs) -> list[tuple[Variant, Variant, str]]:
    out = []
    for spec in specs or ():
        if spec.count(":") != 1:
            raise Adapter4RecError(f"--pair {spec!r}: expected A:B (run names, labels or patterns)")
        a, b = spec.split(":")
        sides = []
        for pat in (a, b):
            got = [v for v in variants if _matches(v, pat)]
            if not got:
                raise Adapter4RecError(f"--pair {spec!r}: nothing matches {pat!r} (labels: "
                                       + "; ".join(v.label for v in variants) + ")")
            sides.append(got)
        out += [(x, y, "--pair") for x in sides[0] for y in sides[1] if x is not y]
    return out


def _task_keys(keys: list[str]) -> list[str]:
    """What defines the task a run solves: its data (and fractions), where it starts from, and
    the objective it is trained on (a BCE run is never paired with an in-batch softmax one: the
    objective moves the metric as much as a method does)."""
    return [k for k in keys if k.startswith("data.") or k in DERIVED or k == OBJECTIVE]


def _partner(v: Variant, cands: list[Variant], levels: list[list[str]]) -> Variant | None:
    """The candidate at the same values of the first level of keys that has one: any at the first
    (the same folder group first), else the only one (in the group, else overall)."""
    for i, ks in enumerate(levels):
        found = [c for c in cands if c is not v
                 and all(v.values.get(k, MISSING) == c.values.get(k, MISSING) for k in ks)]
        near = [c for c in found if c.group == v.group]
        if i == 0 and found:
            return (near or found)[0]
        if len(near) == 1 or (not near and len(found) == 1):
            return (near or found)[0]
    return None


def auto_pairs(variants: list[Variant], keys: list[str]) -> list[tuple[Variant, Variant, str]]:
    """Each method against ``full`` at the same other keys; each transfer variant against the
    scratch variant at the same keys. Where none is at the same keys (a learning rate tuned per
    method, a scratch run of ``full`` only), the one partner at the same non-PEFT keys, then at
    the same data and transfer setting, if there is exactly one."""
    # a reference ranking (the most-popular baseline) is no method: it is compared with --pair only
    cand = [v for v in variants if not v.is_source and v.method not in REFERENCES]
    keys = [k for k in keys if k not in SEEDS]
    non_peft = [k for k in keys if k != METHOD and not k.startswith(OPTIONS)]
    out = []
    # full fine-tuning with its default options (both towers): a full run of one tower
    # (towers: [user], frozen item features) is a method of its own, not the reference
    full = [f for f in cand if f.method == "full" and f.values.get(INIT) != "scratch"
            and all(_hashable(val) == _default(k, "full") for r in f.runs
                    for k, val in r.config.items() if k.startswith(OPTIONS))]
    for v in cand:
        if v.method != "full":
            f = _partner(v, full, [non_peft, _task_keys(keys)])
            if f is not None:
                out.append((v, f, "vs full"))
    scratch = [s for s in cand if s.values.get(INIT) == "scratch"]
    non_init = [k for k in keys if k not in DERIVED]
    for v in cand:
        if v.values.get(INIT) == "transfer":
            s = _partner(v, scratch, [non_init, [k for k in non_peft if k not in DERIVED],
                                      [k for k in _task_keys(keys) if k not in DERIVED]])
            if s is not None:
                out.append((v, s, "transfer vs scratch"))
    return out


def pair_table(pairs, k: int = 10, resamples: int = 1000, seed: int = 0):
    """(table of the pairs' NDCG@k difference and 95% CI, the pairs skipped and why)."""
    rows, skipped, done = [], [], set()
    cache = {}
    for a, b, why in pairs:
        if (id(a), id(b)) in done:
            continue
        done.add((id(a), id(b)))
        reason = _same_users(a, b)
        got = {}
        for v in (a, b):
            if id(v) not in cache:
                cache[id(v)] = _variant_scores(v, k)
            got[id(v)] = cache[id(v)]
        reason = reason or got[id(a)][1] or got[id(b)][1]
        sa, sb = got[id(a)][0], got[id(b)][0]
        if reason is None and len(sa) != len(sb):
            reason = f"they ranked different numbers of test users ({len(sa)}, {len(sb)})"
        if reason:
            skipped.append(f"{a.label} vs {b.label} ({why}): {reason}")
            continue
        diff, lo, hi = paired_bootstrap(sa, sb, resamples, seed)
        rows.append({"A": a.label, "B": b.label, "why": why, "users": len(sa),
                     "seeds": f"{len(a.runs)}/{len(b.runs)}", f"NDCG@{k}_A": float(sa.mean()),
                     f"NDCG@{k}_B": float(sb.mean()), "diff": diff, "ci_low": lo, "ci_high": hi,
                     "ci_excludes_0": bool(lo > 0 or hi < 0)})
    cols = ["A", "B", "why", "users", "seeds", f"NDCG@{k}_A", f"NDCG@{k}_B", "diff", "ci_low",
            "ci_high", "ci_excludes_0"]
    return pd.DataFrame(rows, columns=cols), skipped


# ------------------------------------------------------------------- planned runs not finished

def _progress(folder: Path) -> str:
    """What a run folder without a metrics.json holds: the epochs it finished so far, or nothing."""
    epochs = [e for e in _epochs(folder) if isinstance(e.get("valid"), dict)]
    if epochs:
        # the early-stopping metric: NDCG@10, or AUC for runs that rank no full catalogue (GPSD)
        key = "NDCG@10" if "NDCG@10" in epochs[-1]["valid"] else "AUC"
        best = max(epochs, key=lambda e: e["valid"].get(key, -math.inf))
        return (f"in progress: {len(epochs)} epoch(s) finished, best valid {key} "
                f"{best['valid'].get(key, math.nan):.4f} (epoch {best.get('epoch')})")
    if (folder / "checkpoints").exists() or (folder / "config.yaml").is_file():
        return "started, no epoch finished"
    return "not started"


def _why(specs) -> list[tuple[str, str]]:
    out = []
    for spec in specs:
        pattern, _, text = str(spec).partition(":")  # run names and their patterns have no ':'
        if not pattern.strip() or not text.strip():
            raise Adapter4RecError(f"--why {spec!r}: give PATTERN:REASON (a run-name pattern, "
                                   "as suite run --only takes, then why those runs were not run)")
        out.append((pattern.strip(), text.strip()))
    return out


def _run_hours(folder: Path) -> float:
    """Hours of training and evaluation a run folder records (resources.json, one record per epoch
    kept; an epoch cut by a kill and trained again counts once; cache builds are not in it)."""
    res = _read_json(folder / RESOURCES_FILE, RESOURCES_FILE) or {}
    epochs = res.get("epochs", []) if isinstance(res, dict) else []
    return sum(float(e.get(k) or 0) for e in epochs if isinstance(e, dict)
               for k in ("epoch_seconds", "eval_seconds")) / 3600


def suite_progress(suites, why=()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per suite: its planned runs, how many finished, are in progress, failed or not
    started, and the hours of training and evaluation in its finished and unfinished runs;
    one row per planned run of ``suites`` (suite files) that has no metrics.json: the suite, the
    run, its phase, its state (in progress: the epochs so far; failed or blocked as the suite's
    last ``suite.json`` says; not started) and, for the first ``why`` "PATTERN:REASON" whose
    pattern matches the run's name, the reason it was not run). A run that two suites share
    (their source) counts in both, but its row and hours only in the first; a main run linked to
    its winning selection run adds no hours of its own."""
    from .suite import Suite, matches  # the suite runner imports the trainer: only when asked

    reasons = _why(why)
    rows, summary, seen = [], [], set()
    for path in suites:
        s = Suite(path)
        last = _read_json(s.output / "suite.json", "suite.json") or {}
        status = {r.get("name"): r for r in last.get("runs", []) if isinstance(r, dict)} \
            if isinstance(last, dict) else {}
        count = Counter()
        hours = {"finished": 0.0, "unfinished": 0.0}
        for r in s.sources + s.select_runs + s.main:
            count["planned"] += 1
            shared = r.folder.resolve() in seen
            seen.add(r.folder.resolve())
            if (r.folder / "metrics.json").is_file():
                count["finished"] += 1
                hours["finished"] += 0.0 if shared else _run_hours(r.folder)
                continue
            state = _progress(r.folder)
            kind = "not started" if state == "not started" else "in progress"
            said = status.get(r.name) or {}
            if said.get("status") in ("failed", "blocked") and said.get("error"):
                kind = "failed"
                state = f"{said['status']}: {said['error']}" + ("" if state == "not started"
                                                               else f" ({state})")
            count[kind] += 1
            if shared:  # listed, and its hours counted, in the suite listed first
                continue
            hours["unfinished"] += _run_hours(r.folder)
            reason = next((text for pattern, text in reasons if matches(r.name, pattern)), "")
            rows.append({"suite": s.name, "run": r.name, "phase": r.phase, "state": state,
                         "why": reason})
        summary.append({"suite": s.name, "planned": count["planned"], "finished": count["finished"],
                        "in progress": count["in progress"], "failed": count["failed"],
                        "not started": count["not started"],
                        "hours finished": round(hours["finished"], 2),
                        "hours unfinished": round(hours["unfinished"], 2)})
    return (pd.DataFrame(summary),
            pd.DataFrame(rows, columns=["suite", "run", "phase", "state", "why"]))


# -------------------------------------------------------------------------------------- report

@dataclass
class Report:
    runs: list[RunInfo]       # the compared runs (source runs aside)
    keys: list[str]
    variants: list[Variant]
    run_table: pd.DataFrame
    variant_table: pd.DataFrame
    pair_table: pd.DataFrame
    skipped: list[str]
    k: int
    groups: dict = field(default_factory=dict)  # folder group -> (keys, variants, variant table)
    resamples: int = 1000
    sources: list[RunInfo] = field(default_factory=list)  # runs that others start from
    source_table: pd.DataFrame | None = None
    unfinished: pd.DataFrame | None = None  # planned runs of the suites given, not finished
    suites: pd.DataFrame | None = None      # per suite given: runs planned, finished, ..., hours


def build(paths: list[str], pairs=(), auto: bool = True, k: int = 10, resamples: int = 1000,
          seed: int = 0, suites=(), why=()) -> Report:
    progress, unfinished = suite_progress(suites, why) if suites else (None, None)
    try:
        found = collect_runs(paths)
    except NoRuns:
        if unfinished is None:
            raise
        empty = pd.DataFrame()  # nothing finished yet: the report is the list of what is planned
        return Report([], [], [], empty, empty, empty, [], k, resamples=resamples,
                      unfinished=unfinished, suites=progress)
    # the source runs others start from (pretraining) are listed apart: compared with the runs
    # adapted from them, their other data would name every label
    runs = [r for r in found if not r.is_source] or found
    sources = [r for r in found if r not in runs]
    keys = varied_keys(runs)
    group_names = sorted({r.group for r in runs})
    several = len(group_names) > 1
    variants = make_variants(runs, keys, by_group=several)
    chosen = explicit_pairs(variants, pairs) + (auto_pairs(variants, keys) if auto else [])
    ptable, skipped = pair_table(chosen, k, resamples, seed)
    rep = Report(runs, keys, variants, run_table(runs, keys),
                 variant_table(variants, keys, several), ptable, skipped, k, resamples=resamples,
                 sources=sources, source_table=run_table(sources, varied_keys(sources))
                 if sources else None, unfinished=unfinished, suites=progress)
    if several:
        for g in group_names:
            gr = [r for r in runs if r.group == g]
            gk = varied_keys(gr)
            gv = make_variants(gr, gk, by_group=False)
            for v in gv:
                v.group = g
            rep.groups[g] = (gk, gv, variant_table(gv, gk, False))
    return rep


_INTS = ("seed", "best_epoch", "n", "users")


def _cell(col: str, v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}" if col == "trainable" else str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if col == "trainable":
            return f"{round(v):,}"
        if col in _INTS and v.is_integer():  # an int column that pandas made float (a gap in it)
            return str(int(v))
        if col in ("trainable_%",):
            return f"{v:.3g}"
        if col == "adapter_mb":
            return f"{v:.3f}"
        if col.startswith(("epoch_s", "hours")):
            return f"{v:.2f}"
        if col.startswith("peak_"):
            return f"{v:.0f}"
        if col in ("diff", "ci_low", "ci_high"):
            return f"{v:+.4f}"
        return f"{v:.4f}"
    return str(v)


def markdown_table(df: pd.DataFrame) -> str:
    """A Markdown table; ``X`` and ``X_std`` columns become one ``X`` cell "mean ± std"."""
    cols = [c for c in df.columns if not (c.endswith("_std") and c[:-4] in df.columns)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            s = _cell(c, r[c])
            std = r.get(f"{c}_std") if f"{c}_std" in df.columns else None
            if s and std is not None and not (isinstance(std, float) and math.isnan(std)):
                s = f"{s} ± {_cell(c, std)}"
            cells.append(s.replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_markdown(rep: Report) -> str:
    out = ["## Runs", "", markdown_table(rep.run_table) if rep.runs else "No run has finished yet."]
    if rep.keys:
        out += ["", "Varied keys: " + ", ".join(f"`{k}`" for k in rep.keys) + "."]
    if any(len(v.runs) > 1 for v in rep.variants) or rep.groups:
        out += ["", "## Variants (mean ± std over seeds)", "", markdown_table(rep.variant_table)]
    if len(rep.pair_table) or rep.skipped:
        out += ["", (f"## Paired bootstrap: test NDCG@{rep.k} of A − B over the same test users "
                     f"(95% CI, {rep.resamples} resamples)"), ""]
        if len(rep.pair_table):
            df = rep.pair_table.copy()
            df.insert(df.columns.get_loc("ci_low"), "95% CI",
                      [f"[{lo:+.4f}, {hi:+.4f}]" for lo, hi in zip(df.ci_low, df.ci_high)])
            out.append(markdown_table(df.drop(columns=["ci_low", "ci_high"])))
        if rep.skipped:
            out += ["", "Pairs not compared:", ""] + [f"- {s}" for s in rep.skipped]
    for g, (keys, _, table) in rep.groups.items():
        out += ["", f"## {g or '(top level)'}", ""]
        if keys:
            out += ["Varied keys: " + ", ".join(f"`{k}`" for k in keys) + ".", ""]
        out.append(markdown_table(table))
    if rep.source_table is not None:
        out += ["", "## Source runs (train.init_from of the runs above)", "",
                markdown_table(rep.source_table)]
    if rep.suites is not None:
        out += ["", "## Suites (hours of training and evaluation recorded in the run folders)", "",
                markdown_table(rep.suites)]
    if rep.unfinished is not None:
        n = len(rep.unfinished)
        out += ["", "## Planned runs not finished", ""]
        out.append(markdown_table(rep.unfinished) if n else
                   "Every planned run of the suites finished.")
    return "\n".join(out)


def write_csv(rep: Report, path: str | Path) -> list[Path]:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix == ".csv" else path
    written = [path, Path(f"{stem}.variants.csv"), Path(f"{stem}.pairs.csv")]
    path.parent.mkdir(parents=True, exist_ok=True)
    rep.run_table.to_csv(written[0], index=False)
    rep.variant_table.to_csv(written[1], index=False)
    rep.pair_table.to_csv(written[2], index=False)
    for name, df in (("suites", rep.suites), ("unfinished", rep.unfinished)):
        if df is not None:
            written.append(Path(f"{stem}.{name}.csv"))
            df.to_csv(written[-1], index=False)
    return written


# --------------------------------------------------------------------------------------- plots

_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39"]
_MARKERS = "osD^vPX*h<>p"


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise Adapter4RecError("plots need matplotlib: pip install 'adapter4rec[plots]'") from None
    return plt


def _style(method: str) -> tuple[str, str]:
    names = list(registry.available())
    i = names.index(method) if method in names else len(names) + sum(map(ord, method)) % 7
    return _COLOURS[i % len(_COLOURS)], _MARKERS[i % len(_MARKERS)]


def plot_metric(table: pd.DataFrame, k: int) -> str | None:
    """test_NDCG@k when evaluated, else the smallest cut-off's test NDCG."""
    if f"test_NDCG@{k}" in table and table[f"test_NDCG@{k}"].notna().any():
        return f"test_NDCG@{k}"
    cols = sorted((c for c in table.columns if c.startswith("test_NDCG@") and not c.endswith("_std")),
                  key=lambda c: int(c.split("@")[1]))
    return cols[0] if cols else None


def _points(variants: list[Variant], table: pd.DataFrame, metric: str):
    out = []
    for v, (_, row) in zip(variants, table.iterrows()):
        y, e = row.get(metric), row.get(f"{metric}_std")
        if v.is_source or y is None or (isinstance(y, float) and math.isnan(y)):
            continue
        e = 0.0 if e is None or (isinstance(e, float) and math.isnan(e)) else float(e)
        out.append((v, row, float(y), e))
    return out


def _nice(metric: str) -> str:
    split, name = metric.split("_", 1)
    return f"{split} {name}"


FRACTIONS = (FRACTION, SOURCE_FRACTION)


def _full_data(v: Variant, keys=FRACTIONS) -> bool:
    """Are the variant's data fractions (target, source) all 1 (or not applicable)?"""
    return all(v.values.get(k, MISSING) in (MISSING, 1.0) for k in keys)


def plot_tradeoff(variants, table, metric: str, path, title: str = "",
                  full_data: bool = False) -> Path | None:
    """Test NDCG@k against trainable parameters (log x): one colour and marker per method, each
    point named by its variant (mean ± std over seeds). ``full_data``: only variants trained on
    all the users (when some are)."""
    plt = _pyplot()
    pts = [(v, row, y, e) for v, row, y, e in _points(variants, table, metric)
           if row.get("trainable") and row["trainable"] > 0]
    note = ""
    if full_data and any(_full_data(p[0]) for p in pts) and not all(_full_data(p[0]) for p in pts):
        pts, note = [p for p in pts if _full_data(p[0])], ", all users"
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(9, 6))
    by_method = defaultdict(list)
    for p in pts:
        by_method[p[0].method].append(p)
    notes = []
    for method, ps in by_method.items():
        colour, marker = _style(method)
        ax.errorbar([p[1]["trainable"] for p in ps], [p[2] for p in ps],
                    yerr=[p[3] for p in ps] if any(p[3] for p in ps) else None, fmt=marker,
                    color=colour, ms=8, capsize=3, linestyle="none", label=method)
        at = defaultdict(list)  # points in the same place share one annotation
        scratch = any(p[0].values.get(INIT) == "scratch" for p in ps)
        for v, row, y, _ in ps:
            text = v.label[len(method):].strip() if v.label.startswith(method) else v.label
            if len(ps) > 1 and (not text or text.startswith("[")):  # the method's default
                text = f"{'transfer' if scratch else 'default'} {text}".strip()
            if text:
                at[(float(row["trainable"]), round(y, 6))].append(text)
        notes += [(x, y, "\n".join(dict.fromkeys(t)), colour) for (x, y), t in at.items()]
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(_nice(metric))
    seeds = any(len(v.runs) > 1 for v, *_ in pts)
    extra = ", ".join(x for x in ("mean ± std over seeds" if seeds else "", note.strip(", ")) if x)
    ax.set_title((title or f"{_nice(metric)} vs trainable parameters")
                 + (f" ({extra})" if extra else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="method", fontsize=8, loc="best")
    ax.margins(x=0.2, y=0.15)
    fig.tight_layout()
    _annotate(fig, ax, notes, [(p[1]["trainable"], p[2]) for p in pts])
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)


def _annotate(fig, ax, notes, points=(), size: float = 7.0) -> None:
    """Name points without overprinting: each text box (estimated in points) goes right of its
    point, moved down past the markers and the boxes already placed (highest points first),
    with a thin leader line when it had to move."""
    ax.get_xlim(), ax.get_ylim()  # settle the autoscaled limits
    scale = 72.0 / fig.dpi
    placed = []
    for x, y in points:  # the markers
        px, py = ax.transData.transform((x, y)) * scale
        placed.append((px - 5, py - 5, px + 5, py + 5))
    anchors = [(ax.transData.transform((x, y)) * scale, x, y, text, colour)
               for x, y, text, colour in notes]
    for (px, py), x, y, text, colour in sorted(anchors, key=lambda a: -a[0][1]):
        lines = text.split("\n")
        w, h = max(map(len, lines)) * size * 0.58, len(lines) * size * 1.25
        x0, y0 = px + 6, py + 2
        for _ in range(len(placed) + 1):
            clash = [r for r in placed if x0 < r[2] and r[0] < x0 + w and y0 < r[3] and r[1] < y0 + h]
            if not clash:
                break
            y0 = min(r[1] for r in clash) - h - 1
        placed.append((x0, y0, x0 + w, y0 + h))
        moved = y0 < py - 4
        ax.annotate(text, (x, y), xytext=(x0 - px + (6 if moved else 0), y0 - py),
                    textcoords="offset points", fontsize=size, color=colour, va="bottom",
                    ha="left", arrowprops={"arrowstyle": "-", "color": colour, "lw": 0.5,
                                           "alpha": 0.7, "shrinkA": 0, "shrinkB": 4}
                    if moved else None)


def plot_scaling(variants, keys, table, metric: str, fkey: str, path, what: str,
                 title: str = "") -> Path | None:
    """The metric against one data fraction (the other one at 1 where there is such a run): one
    line per variant without that key that has two fractions or more; a variant without the key
    (scratch on the source axis) as a dashed level. None when no line has two points."""
    plt = _pyplot()
    other = [k for k in FRACTIONS if k != fkey]
    pts = _points(variants, table, metric)
    if any(_full_data(p[0], other) for p in pts):
        pts = [p for p in pts if _full_data(p[0], other)]
    rest = [k for k in keys if k != fkey and k not in SEEDS]
    series: dict[tuple, list] = defaultdict(list)
    for v, row, y, e in pts:
        series[tuple(v.values.get(k, MISSING) for k in rest)].append((v, v.values.get(fkey, MISSING), y, e))
    lines = {key: s for key, s in series.items()
             if len({x for _, x, *_ in s if x is not MISSING}) > 1}
    if not lines:
        return None
    levels = {key: s for key, s in series.items() if all(x is MISSING for _, x, *_ in s)}
    shown = {**lines, **levels}
    reps = [Variant(dict(zip(rest, key)), s[0][0].runs, s[0][0].group) for key, s in shown.items()]
    names = dict(zip(shown, labels(reps, rest)))
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    styles = Counter()
    for key, s in lines.items():
        method = s[0][0].method
        colour, marker = _style(method)
        dash = ["-", "-.", ":", (0, (5, 1))][styles[method] % 4]
        styles[method] += 1
        line = sorted((p for p in s if p[1] is not MISSING), key=lambda p: p[1])
        ax.errorbar([p[1] for p in line], [p[2] for p in line],
                    yerr=[p[3] for p in line] if any(p[3] for p in line) else None,
                    marker=marker, color=colour, linestyle=dash, capsize=3, label=names[key])
    for key, s in levels.items():
        colour = _style(s[0][0].method)[0]
        for p in s:
            ax.axhline(p[2], color=colour, linestyle="--", linewidth=1.2,
                       label=f"{names[key]} (no {what.split()[0]} data)")
    xs = [x for s in lines.values() for _, x, *_ in s if x is not MISSING]
    if min(xs) > 0 and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
    ax.set_xticks(sorted(set(xs)), [f"{x:g}" for x in sorted(set(xs))])
    ax.set_xlabel(f"{what} (the share of its users trained on)")
    ax.set_ylabel(_nice(metric))
    seeds = any(len(v.runs) > 1 for v, *_ in pts)
    ax.set_title((title or f"{_nice(metric)} vs {what}") + (" (mean ± std over seeds)" if seeds else ""))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)


def plot_resources(variants, table, path, full_data: bool = True) -> Path | None:
    """Seconds per training epoch and peak memory, one bar per variant, coloured by method
    (``full_data``: the variants trained on all the users, when some are)."""
    plt = _pyplot()
    rows = [(v, row) for v, (_, row) in zip(variants, table.iterrows()) if not v.is_source]
    if full_data and any(_full_data(v) for v, _ in rows):
        rows = [(v, row) for v, row in rows if _full_data(v)]
    if not rows:
        return None
    gpu = "peak_gpu_mb" in table and table["peak_gpu_mb"].notna().any()
    mem_col = "peak_gpu_mb" if gpu else "peak_rss_mb"
    mem_what = ("peak GPU memory allocated by torch (MiB)" if gpu
                else "peak resident memory of the process (MiB)")
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.6 + 0.38 * len(rows)), sharey=True)
    names = [v.label for v, _ in rows]
    colours = [_style(v.method)[0] for v, _ in rows]
    ypos = np.arange(len(rows))[::-1]

    def val(row, c):
        x = row.get(c)
        return float(x) if x is not None and not (isinstance(x, float) and math.isnan(x)) else 0.0
    for ax, col, what in ((axes[0], "epoch_s", "seconds per training epoch (mean)"),
                          (axes[1], mem_col, mem_what)):
        xs = [val(row, col) for _, row in rows]
        ax.barh(ypos, xs, color=colours)
        ax.set_xlabel(what)
        ax.grid(True, axis="x", alpha=0.3)
        if not any(xs):
            ax.text(0.5, 0.5, f"no {RESOURCES_FILE} in these runs" if col != "epoch_s"
                    else "no epoch times", transform=ax.transAxes, ha="center", va="center")
    axes[0].set_yticks(ypos, names, fontsize=8)
    fig.suptitle("Epoch time and peak memory per variant")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "top"


def write_plots(rep: Report, folder: str | Path) -> list[Path]:
    """tradeoff.png and resources.png over every variant (those trained on all the users);
    scaling_{target,source}.png per folder group (suffixed _<group> when there are several)
    where that fraction varies; tradeoff_<group>.png per folder group when there are several."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metric = plot_metric(rep.variant_table, rep.k) if rep.runs else None
    if metric is None:
        return []
    out = [plot_tradeoff(rep.variants, rep.variant_table, metric, folder / "tradeoff.png",
                         full_data=True),
           plot_resources(rep.variants, rep.variant_table, folder / "resources.png")]
    scopes = ([(g, gk, gv, table) for g, (gk, gv, table) in rep.groups.items()] if rep.groups
              else [("", rep.keys, rep.variants, rep.variant_table)])
    for g, keys, variants, table in scopes:
        gm = plot_metric(table, rep.k)
        if gm is None:
            continue
        suffix, prefix = (f"_{_slug(g)}", f"{g}: ") if rep.groups else ("", "")
        for fkey, name, what in ((FRACTION, "scaling_target", "target user fraction"),
                                 (SOURCE_FRACTION, "scaling_source", "source user fraction")):
            if fkey in keys:
                out.append(plot_scaling(variants, keys, table, gm, fkey,
                                        folder / f"{name}{suffix}.png", what,
                                        f"{prefix}{_nice(gm)} vs {what}"))
        if rep.groups:
            out.append(plot_tradeoff(variants, table, gm, folder / f"tradeoff{suffix}.png",
                                     f"{prefix}{_nice(gm)} vs trainable parameters"))
    return [p for p in out if p is not None]


def _records(df: pd.DataFrame) -> list[dict]:
    return df.astype(object).where(df.notna(), None).to_dict("records")


def collect(paths: list[str]) -> list[dict]:
    """The run table's rows (0.2's helper, kept for its callers)."""
    runs = collect_runs(paths)
    return _records(run_table(runs, varied_keys(runs)))


def report(paths: list[str], plot: str | None = None, markdown: str | None = None,
           csv: str | None = None, plots: str | None = None, pairs=(), auto_pairs: bool = True,
           k: int = 10, resamples: int = 1000, seed: int = 0, quiet: bool = False,
           suites=(), why=()) -> list[dict]:
    """Print (and write) the tables of the runs under ``paths``; returns the run table's rows.

    ``plot``: the trade-off PNG alone; ``plots``: a folder for every plot; ``pairs``: "A:B"
    (labels, run names or patterns) compared beside the automatic pairs (``auto_pairs``);
    ``suites``: suite files whose planned runs without a metrics.json are listed (with their
    progress, and the reason of the first ``why`` "PATTERN:REASON" matching each)."""
    rep = build(paths, pairs, auto_pairs, k, resamples, seed, suites, why)
    text = to_markdown(rep)
    written = []
    if markdown:
        Path(markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(markdown).write_text(text + "\n", encoding="utf-8")
    if csv:
        written += write_csv(rep, csv)
    if plot and rep.runs:
        metric = plot_metric(rep.variant_table, k)
        got = metric and plot_tradeoff(rep.variants, rep.variant_table, metric, plot)
        if got:
            written.append(got)
    if plots:
        written += write_plots(rep, plots)
    if not quiet:
        print(text)
        if written:
            print("\nwrote " + ", ".join(map(str, written)))
    return _records(rep.run_table)

"""Building a run: data + model + source checkpoint + PEFT + cache, shared by the trainer, the
cache builder and the evaluate command.

    run = build_run(cfg)          # Run(cfg, data, model, content, summary, device, amp)
    run.evaluate(("valid", "test"))
    run.fingerprints()            # what the run is computed from (checked on resume and evaluate)

``prepare`` is the same without a device: (data, model, content, summary).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import peft
from .cache import attach as attach_cache
from .cache.fingerprint import differences, digest
from .config import Config, load_config
from .data.split import RecData, build_data
from .errors import CheckpointError
from .evaluation.evaluator import evaluate
from .model import Recommender, build_model
from .runtime import distributed as dist
from .peft.files import frozen_fingerprint
from .runtime.io import load_into, load_weights
from .runtime.logging import setup_logging
from .runtime.precision import amp_dtype

log = logging.getLogger("adapter4rec")

# Item-specific parameters: they belong to the source domain's items and never transfer.
ITEM_TABLES = ("item_encoder.table.",)

RUN_FILE = "run.json"  # what produced a run folder (runtime.provenance) and what it was computed from
RUN_FORMAT = "adapter4rec-run"
RUN_FORMAT_VERSION = 1  # CHANGELOG.md lists every change of a format


def resolve_checkpoint(path: str) -> Path:
    """A run folder (its best checkpoint), a checkpoint folder, or a weights file."""
    p = Path(path)
    for cand in (p / "checkpoints" / "best" / "model.safetensors",
                 p / "checkpoints" / ".old-best" / "model.safetensors",  # a save cut short
                 p / "model.safetensors", p):
        if cand.is_file():
            return cand
    raise CheckpointError(f"init_from: no checkpoint found at {p} (expected a run folder, a "
                          "checkpoint folder or a .safetensors file)")


def load_data(cfg: Config) -> RecData:
    d = cfg.data
    return build_data(d.path, d.users_file, d.items_file, d.min_seq_len, d.max_seq_len,
                      d.with_abstract, d.unknown_items)


def prepare(cfg: Config, data: RecData | None = None, content=None):
    """Data, model (+ source checkpoint when adapting, + PEFT) and content store for ``cfg``."""
    data = data or load_data(cfg)
    model, content = build_model(cfg, data, content)
    if cfg.train.init_from:
        src = resolve_checkpoint(cfg.train.init_from)
        kept = load_into(model, load_weights(src), str(src), skip_prefixes=ITEM_TABLES)
        log.info("initialised from %s (%d model keys kept as built)", src, len(kept))
    summary = peft.apply(model, cfg.peft.method, **cfg.peft.options)
    if not cfg.train.init_from and not all(p.requires_grad for p in model.user_encoder.parameters()):
        # Without a source checkpoint the user encoder is freshly initialised, not pretrained:
        # freezing it would leave a random network in place, so it trains whatever the method.
        for p in model.user_encoder.parameters():
            p.requires_grad_(True)
        summary = peft.summary(model)
        log.info("no train.init_from: the user encoder is not pretrained and trains fully")
    # taken before the cache may release the backbone's weights
    model.frozen_fingerprint_ = frozen_fingerprint(model)
    # iisan (and frozen with cache.frozen) read cached hidden states instead of running the backbone
    content = attach_cache(cfg, model, data, content)
    return data, model, content, summary


@dataclass
class Run:
    """Everything a run computes with, on its device."""

    cfg: Config
    data: RecData
    model: Recommender
    content: object
    summary: dict
    device: torch.device
    amp: torch.dtype | None

    def fingerprints(self) -> dict:
        """What the run computes from: the data, the seed, the model and PEFT config, the frozen
        weights (per tower) and the source checkpoint. A resume or an evaluation compares them."""
        c = self.cfg
        src = None
        if c.train.init_from:
            f = resolve_checkpoint(c.train.init_from)
            src = {"path": str(f.resolve()), "digest": digest(f.read_bytes())}
        return {"data": data_digest(self.data), "seed": c.train.seed,
                "model": {**vars(c.model), "max_seq_len": c.data.max_seq_len,
                          "max_title_len": c.data.max_title_len,
                          "with_abstract": c.data.with_abstract},
                "peft": {"method": self.summary["method"], **self.summary["options"]},
                "frozen": dict(self.model.frozen_fingerprint_), "source": src}

    def evaluate(self, splits=("valid", "test"), progress: bool = False) -> dict:
        """{split: {"HR@k", "NDCG@k"}} with the run's evaluation settings."""
        c = self.cfg
        return evaluate(self.model, self.content, self.data, self.device, splits, c.eval.k,
                        c.eval.batch_size, c.eval.item_batch_size, c.data.exclude_history,
                        self.amp, progress=progress, num_workers=c.train.num_workers,
                        nonfinite=c.train.nonfinite)


def build_run(cfg: Config, data: RecData | None = None, content=None, device=None) -> Run:
    """``prepare`` on this process's device (joining the process group under torchrun)."""
    device = device or dist.setup()
    data, model, content, summary = prepare(cfg, data, content)
    model.to(device)
    return Run(cfg, data, model, content, summary, device, amp_dtype(cfg.train.amp, device))


def data_digest(data: RecData) -> str:
    """A hash of the data a run trains and evaluates on (items, titles, users, sequences)."""
    seqs = np.concatenate(data.seqs) if data.seqs else np.zeros(0, dtype=np.int64)
    lengths = np.array([len(s) for s in data.seqs], dtype=np.int64)
    return digest("\n".join(data.item_ids), "\n".join(data.texts), "\n".join(data.user_ids),
                  seqs, lengths, data.max_seq_len)


def read_run_file(run: str | Path) -> dict | None:
    """The run folder's ``run.json`` (None for a run made before it existed); a file of a newer
    format, or one that is not a JSON object, is an error naming it."""
    p = Path(run) / RUN_FILE
    if not p.is_file():
        return None
    try:
        info = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:
        raise CheckpointError(f"{p}: not valid JSON ({e}); the run folder is damaged") from None
    if not isinstance(info, dict) or info.get("format") != RUN_FORMAT:
        raise CheckpointError(f"{p}: not an adapter4rec run file")
    if int(info.get("format_version", 0)) > RUN_FORMAT_VERSION:
        raise CheckpointError(f"{p}: run folder of format version {info['format_version']}; this "
                              f"version of adapter4rec reads up to {RUN_FORMAT_VERSION}: upgrade "
                              "adapter4rec (see CHANGELOG.md)")
    return info


def check_fingerprints(saved: dict | None, now: dict, where: str, keys, allow_source: bool = False):
    """Refuse, naming what changed, when ``now`` differs from ``saved`` in ``keys``."""
    if not saved:
        return
    if allow_source:
        keys = [k for k in keys if k not in ("frozen", "source")]
    changed = differences({k: saved.get(k) for k in keys}, {k: now.get(k) for k in keys})
    if changed:
        raise CheckpointError(f"{where} was computed from other inputs than this one (changed: "
                              f"{', '.join(changed)})" + ("; the source checkpoint or the frozen "
                              "weights changed: pass --allow-source-change to evaluate anyway"
                              if any(c.split('.')[0] in ("frozen", "source") for c in changed)
                              else ""))


def evaluate_run(run: str | Path, split: str = "test", overrides: list[str] | None = None,
                 allow_source_change: bool = False) -> dict:
    """Rebuild a run from its folder (config + backbone + init_from + its weights) and evaluate.

    Refused when the run's data, frozen weights or source checkpoint are no longer what it was
    trained on (``run.json``); ``allow_source_change`` accepts a changed source or backbone."""
    run = Path(run)
    info = read_run_file(run)
    cfg = load_config(run / "config.yaml", overrides)
    dist.setup()
    setup_logging()
    r = build_run(cfg)
    saved = (info or {}).get("fingerprints")
    # evaluating on other data on purpose (--set data.*) is no change of the run's own inputs
    other_data = any(o.startswith("data.") for o in overrides or [])
    check_fingerprints(saved, r.fingerprints(), f"run {run}",
                       ("frozen", "source") if other_data else ("data", "frozen", "source"),
                       allow_source_change)
    load_into(r.model, load_weights(run / "checkpoints" / "best"), str(run))
    return r.evaluate(("valid", "test") if split == "both" else (split,))

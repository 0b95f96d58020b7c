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
from .cache import CachedContent, attach as attach_cache
from .cache.prefix import PrefixContent, attach_prefix
from .cache.fingerprint import differences, digest
from .config import Config, load_config, read_run_config, validate
from .data.split import RecData, build_data
from .errors import CheckpointError, ConfigError
from .evaluation.auc import evaluate_auc
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

# GPSD's sparse parameters: the item ID tables (gpsd-rec counts, transfers and freezes its
# `item_embeddings` only; side-feature tables, the segment embedding and the rest are dense).
SPARSE = ("item_encoder.table.", "item_output.")
# train.transfer: (what is loaded from the source run, whether the sparse parameters are frozen)
TRANSFERS = {"NT": (None, False), "FT": ("all", False), "ST": ("sparse", False),
             "FT&SF": ("all", True), "ST&SF": ("sparse", True)}

# Only the SASRec block with biases (model.block: sasrec_bias, 0.1's default) has this key.
BIASED_BLOCK_KEY = "user_encoder.blocks.0.attn.query.bias"

# The shapes an adaptation takes from its source run (``train.init_from``) unless it sets them.
# the shapes a source run fixes (model.block is checked on the weights themselves: check_block)
SOURCE_SHAPES = ("data.max_seq_len", "model.embedding_dim", "model.num_blocks", "model.num_heads")

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


def check_block(cfg: Config, state: dict, source: str) -> None:
    """Refuse weights made with the other SASRec block (``model.block``) before loading any: the
    two blocks share every other name, so loading would silently drop or zero the biases."""
    key, weight = BIASED_BLOCK_KEY, BIASED_BLOCK_KEY[:-len("bias")] + "weight"
    if cfg.model.block == "sasrec" and key in state:
        raise CheckpointError(f"{source} was made with the SASRec block with biases (adapter4rec "
                              "0.1's default) and this run has model.block: sasrec: set "
                              "model.block: sasrec_bias (or pretrain again)")
    if cfg.model.block == "sasrec_bias" and weight in state and key not in state:
        raise CheckpointError(f"{source} was made with the reference SASRec block (no attention "
                              "biases) and this run has model.block: sasrec_bias: set "
                              "model.block: sasrec")


def load_data(cfg: Config) -> RecData:
    d = cfg.data
    return build_data(d.path, d.users_file, d.items_file, d.min_seq_len, d.max_seq_len,
                      d.with_abstract, d.unknown_items, d.user_fraction, d.fraction_seed)


def adopt_source_shapes(cfg: Config) -> dict:
    """An adaptation takes its model shapes from its source run; returns what it took.

    When ``train.init_from`` is a run folder with a ``config.yaml``, each key of ``SOURCE_SHAPES``
    (``data.max_seq_len``, ``model.embedding_dim``, ``model.num_blocks``, ``model.num_heads``)
    that ``cfg`` leaves at the package default takes the source run's value;
    one that ``cfg`` sets to a third value (neither the default nor the source's) is a one-line
    ``ConfigError`` naming the key and both values. A value equal to the default counts as unset.
    A checkpoint folder or a weights file has no config: nothing is taken, and the weights must
    fit as they are. ``cfg`` is changed in place (the trainer saves it as the run's config.yaml)."""
    if not cfg.train.init_from:
        return {}
    run = Path(cfg.train.init_from)
    try:
        saved = read_run_config(run)  # None for a checkpoint folder or a weights file
    except ConfigError as e:
        raise ConfigError(f"train.init_from {run}: {e}") from None
    if saved is None:
        return {}
    defaults, adopted = Config(), {}
    for dotted in SOURCE_SHAPES:
        sec, key = dotted.split(".")
        section = saved.get(sec)
        if not isinstance(section, dict) or key not in section:  # a run made before the key existed
            continue
        theirs, ours = section[key], getattr(getattr(cfg, sec), key)
        default = getattr(getattr(defaults, sec), key)
        if type(theirs) is not type(default):
            raise ConfigError(f"train.init_from {run}: its config.yaml has {dotted}: {theirs!r}, "
                              f"not a {type(default).__name__}")
        if ours == theirs:
            continue
        if ours != default:
            raise ConfigError(f"config key '{dotted}' is {ours!r} but the source run {run} "
                              f"(train.init_from) has {theirs!r}: leave the key at its default "
                              f"to take the source's value, or pretrain with {ours!r}")
        setattr(getattr(cfg, sec), key, theirs)
        adopted[dotted] = theirs
    if adopted:
        log.info("train.init_from %s: taking the source run's %s", run,
                 ", ".join(f"{k}={v}" for k, v in adopted.items()))
        validate(cfg)
    return adopted


def prepare(cfg: Config, data: RecData | None = None, content=None, model: Recommender | None = None):
    """Data, model (+ source checkpoint when adapting, + PEFT) and content store for ``cfg``.

    A ``model`` passed in (built by ``build_model``, PEFT already applied or not) is used as it is:
    no source checkpoint is loaded into it, and a method is applied only when it has none.
    Otherwise an adaptation first takes its model shapes from its source run
    (``adopt_source_shapes``)."""
    if model is None:
        adopted = adopt_source_shapes(cfg)
        if data is not None and data.max_seq_len != cfg.data.max_seq_len and "data.max_seq_len" in adopted:
            raise ConfigError(f"the data given was built with max_seq_len {data.max_seq_len} and the "
                              f"source run {cfg.train.init_from} (train.init_from) has "
                              f"data.max_seq_len {cfg.data.max_seq_len}: build it with "
                              f"max_seq_len={cfg.data.max_seq_len}")
    data = data or load_data(cfg)
    if model is not None:
        return _prepared(cfg, data, model)
    model = build_model(cfg, data, content)
    transfer = None
    if cfg.train.transfer:
        transfer = load_transfer(cfg, model, data)
    elif cfg.train.init_from:
        src = resolve_checkpoint(cfg.train.init_from)
        state = load_weights(src)
        check_block(cfg, state, f"train.init_from {src}")
        kept = load_into(model, state, str(src), skip_prefixes=ITEM_TABLES)
        log.info("initialised from %s (%d model keys kept as built)", src, len(kept))
    summary = peft.apply(model, cfg.peft.method, **cfg.peft.options)
    if _train_unpretrained_user_encoder(cfg, model):
        summary = peft.summary(model)
    if transfer is not None:
        summary = freeze_sparse(model, transfer)
    # taken before the cache may release the backbone's weights
    model.frozen_fingerprint_ = frozen_fingerprint(model)
    # iisan (and frozen with cache.frozen) read cached hidden states instead of running the backbone
    model.content = attach_prefix(cfg, model, data, attach_cache(cfg, model, data, model.content))
    return data, model, model.content, summary


def sparse_names(model: Recommender) -> list[str]:
    """The model's sparse parameters (``SPARSE``: the item ID tables)."""
    return [n for n, _ in model.named_parameters() if n.startswith(SPARSE)]


def load_transfer(cfg: Config, model: Recommender, data: RecData) -> dict:
    """``train.transfer`` (GPSD): load the parameters the strategy transfers from the generative
    run ``train.init_from`` (same items: its data must be this run's) and return the record of
    what was transferred (``freeze_sparse`` adds what is frozen)."""
    strategy = cfg.train.transfer
    what, _ = TRANSFERS[strategy]
    record = {"strategy": strategy, "source": None, "transferred": [], "frozen": []}
    if what is None:
        log.info("train.transfer NT: nothing transferred, every parameter initialised here")
        return record
    src = resolve_checkpoint(cfg.train.init_from)
    state = load_weights(src)
    check_block(cfg, state, f"train.init_from {src}")
    info = read_run_file(src.parents[2]) if src.name == "model.safetensors" and \
        src.parent.parent.name == "checkpoints" else None
    theirs = ((info or {}).get("fingerprints") or {}).get("data")
    if theirs is not None and theirs != data_digest(data):
        raise CheckpointError(f"train.transfer {strategy}: the source run {cfg.train.init_from} was "
                              "trained on other data (its run.json's data fingerprint differs), and "
                              "its item ID tables only fit the same items: pretrain on this run's "
                              "data (same data.* keys)")
    if what == "sparse":
        state = {k: v for k, v in state.items() if k.startswith(SPARSE)}
        if not state:
            raise CheckpointError(f"train.transfer {strategy}: {src} holds no item ID table "
                                  f"({', '.join(SPARSE)}): nothing to transfer")
    load_into(model, state, str(src))
    own = dict(model.named_parameters())
    record.update(source=str(src), transferred=sorted(k for k in state if k in own))
    log.info("train.transfer %s from %s: %d parameter tensors transferred (%s)", strategy, src,
             len(record["transferred"]), ", ".join(record["transferred"]))
    return record


def freeze_sparse(model: Recommender, record: dict) -> dict:
    """Freeze the sparse parameters under ``&SF`` strategies; the run's summary (``peft.summary``)
    with ``transfer``: the strategy, its source, the parameters transferred, the parameters frozen
    and the dense / sparse parameter counts (GPSD's model sizes)."""
    if TRANSFERS[record["strategy"]][1]:
        for n, p in model.named_parameters():
            if n.startswith(SPARSE):
                p.requires_grad_(False)
    params = dict(model.named_parameters())
    record["frozen"] = sorted(n for n, p in params.items() if not p.requires_grad)
    sparse = sparse_names(model)
    record["sparse_params"] = sum(params[n].numel() for n in sparse)
    record["dense_params"] = sum(p.numel() for n, p in params.items() if n not in sparse)
    log.info("train.transfer %s: frozen %s", record["strategy"], ", ".join(record["frozen"]) or "none")
    summary = peft.summary(model)
    summary["transfer"] = record
    return summary


def _train_unpretrained_user_encoder(cfg: Config, model: Recommender) -> bool:
    """Without a source checkpoint the user encoder is freshly initialised, not pretrained:
    freezing it would leave a random network in place (that no config could rebuild), so it
    trains whatever the method. Returns whether it changed anything."""
    if cfg.train.init_from or all(p.requires_grad for p in model.user_encoder.parameters()):
        return False
    for p in model.user_encoder.parameters():
        p.requires_grad_(True)
    log.info("no train.init_from: the user encoder is not pretrained and trains fully")
    return True


def _prepared(cfg: Config, data: RecData, model: Recommender):
    """``prepare`` for a model built by the caller: its method is applied (as ``cfg`` says) only
    if it has none, and ``cfg.peft`` then records the model's own method and options."""
    if model.content is None:
        raise ConfigError("the model holds no content store: build it with adapter4rec.build_model")
    if not getattr(model, "peft_config", None):
        peft.apply(model, cfg.peft.method, **cfg.peft.options)
    _train_unpretrained_user_encoder(cfg, model)
    own = dict(model.peft_config)
    cfg.peft.method = own.pop("method")
    cfg.peft.options = {k: v for k, v in own.items() if k != "merged"}
    if getattr(model, "frozen_fingerprint_", None) is None:
        model.frozen_fingerprint_ = frozen_fingerprint(model)
    if not isinstance(model.content, (CachedContent, PrefixContent)):
        model.content = attach_prefix(cfg, model, data, attach_cache(cfg, model, data, model.content))
    return data, model, model.content, peft.summary(model)


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
        out = {"data": data_digest(self.data), "seed": c.train.seed,
               "model": {**vars(c.model), "max_seq_len": c.data.max_seq_len,
                         "max_title_len": c.data.max_title_len,
                         "with_abstract": c.data.with_abstract},
               "peft": {"method": self.summary["method"], **self.summary["options"]},
               "frozen": dict(self.model.frozen_fingerprint_), "source": src}
        if c.data.item_features:  # only when set: runs without side features keep their record
            out["item_features"] = digest(Path(c.data.path, c.data.item_features).read_bytes())
        return out

    def evaluate(self, splits=("valid", "test"), progress: bool = False,
                 return_ranks: bool = False):
        """{split: {"HR@k", "NDCG@k"}} with the run's evaluation settings; with ``return_ranks``
        ``(metrics, {split: per-user ranks})`` (``evaluation.evaluator.evaluate``). With
        ``eval.metric: auc`` (and always for a discriminative model, which ranks no full catalogue)
        also ``AUC`` (and ``loss``) per split (``evaluation.auc``); the split ``train`` has those
        only."""
        c = self.cfg
        out, ranks = {}, {}
        ranking = [s for s in splits if s != "train"]  # full ranking: valid and test only
        if self.model.yields_user_vectors and ranking:
            out, ranks = evaluate(self.model, self.content, self.data, self.device, ranking,
                                  c.eval.k, c.eval.batch_size, c.eval.item_batch_size,
                                  c.data.exclude_history, self.amp, progress=progress,
                                  num_workers=c.train.num_workers, nonfinite=c.train.nonfinite,
                                  return_ranks=True)
        if c.eval.metric == "auc" or not self.model.yields_user_vectors:
            auc = evaluate_auc(self.model, self.content, self.data, self.device, splits,
                               c.eval.auc_negatives, c.eval.auc_seed, c.eval.batch_size,
                               c.eval.item_batch_size, self.amp, c.train.num_workers,
                               c.train.nonfinite, c.eval.auc_users)
            for split, res in auc.items():
                out.setdefault(split, {}).update(res)
        out = {s: out[s] for s in splits if s in out}
        return (out, ranks) if return_ranks else out


def build_run(cfg: Config, data: RecData | None = None, content=None, device=None,
              model: Recommender | None = None) -> Run:
    """``prepare`` on this process's device (joining the process group under torchrun)."""
    device = device or dist.setup()
    data, model, content, summary = prepare(cfg, data, content, model)
    model.to(device)
    return Run(cfg, data, model, content, summary, device, amp_dtype(cfg.train.amp, device))


def data_digest(data: RecData) -> str:
    """A hash of the data a run trains and evaluates on (items, titles, users, sequences)."""
    seqs = np.concatenate(data.seqs) if data.seqs else np.zeros(0, dtype=np.int64)
    lengths = np.array([len(s) for s in data.seqs], dtype=np.int64)
    return digest("\n".join(data.item_ids), "\n".join(data.texts), "\n".join(data.user_ids),
                  seqs, lengths, data.max_seq_len)


def start_precisions(info) -> list[str]:
    """The precision train.amp resolved to in each start of a run (``run.json``'s starts, in
    order; starts written before adapter4rec recorded it have none)."""
    starts = info.get("starts") if isinstance(info, dict) else None
    return [s["precision"] for s in starts or [] if isinstance(s, dict) and s.get("precision")]


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


MISSING = object()  # a key one of two configs lacks (``config_changes``)


def dotted_get(tree: dict, dotted: str):
    """``tree``'s value at a dotted key (``train.lr``), ``MISSING`` where there is none."""
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return MISSING
        tree = tree[part]
    return tree


def config_changes(saved: dict, cfg: Config) -> list[tuple[str, object, object]]:
    """How a run's saved config (``read_run_config``) differs from ``cfg``: ``(dotted key, old,
    new)``, ``MISSING`` where one side lacks the key. Not a change: a key added to the library
    after the run, at its default. Callers drop what they allow (suites: ``suite.drift``;
    resumes: ``Trainer._check_train_settings``). ``cfg``'s PEFT options are compared as the build
    records them in config.yaml (``peft.resolve``: ``positions: ffn`` is ``['ffn']``)."""
    built, defaults = cfg.to_dict(), Config().to_dict()
    built["peft"]["options"] = peft.resolve(cfg.peft.method, cfg.peft.options)
    defaults["peft"]["options"] = peft.defaults(cfg.peft.method)  # an option added after the run
    out = []
    for key in differences(saved, built):
        old, new = dotted_get(saved, key), dotted_get(built, key)
        if not (old is MISSING and new == dotted_get(defaults, key)):
            out.append((key, old, new))
    return out


def change_text(key: str, old, new) -> str:
    """``key old -> new``, as every config-change error names a change."""
    return f"{key} {'(unset)' if old is MISSING else repr(old)} -> {new!r}"


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


def open_run(run: str | Path, overrides: list[str] | None = None,
             allow_source_change: bool = False, device=None) -> Run:
    """A finished run rebuilt from its folder: config + backbone + ``init_from`` + its best
    weights, on this process's device (``model.config`` is the run's config).

    Refused when the run's data, frozen weights or source checkpoint are no longer what it was
    trained on (``run.json``); ``allow_source_change`` accepts a changed source or backbone."""
    run = Path(run)
    info = read_run_file(run)
    cfg = load_config(run / "config.yaml", overrides)
    r = build_run(cfg, device=device or dist.setup())
    saved = (info or {}).get("fingerprints")
    # evaluating on other data on purpose (--set data.*) is no change of the run's own inputs
    other_data = any(o.startswith("data.") for o in overrides or [])
    check_fingerprints(saved, r.fingerprints(), f"run {run}",
                       ("frozen", "source") if other_data else ("data", "frozen", "source"),
                       allow_source_change)
    state = load_weights(run / "checkpoints" / "best")
    check_block(cfg, state, f"run {run}")
    load_into(r.model, state, str(run))
    r.model.config = cfg
    return r


def evaluate_run(run: str | Path, split: str = "test", overrides: list[str] | None = None,
                 allow_source_change: bool = False) -> dict:
    """``open_run`` and evaluate: {split: {"HR@k", "NDCG@k"}} (``split``: valid, test or both)."""
    setup_logging()
    r = open_run(run, overrides, allow_source_change)
    return r.evaluate(("valid", "test") if split == "both" else (split,))

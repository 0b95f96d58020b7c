"""Layered, typed configuration: package defaults < experiment YAML < ``--set a.b=value``.

A YAML file may start from others: ``extends: base.yaml`` (or a list, applied in order; paths
relative to the file) loads the base first, then the file's own keys over it, so a file holds only
what it changes. Every field below is documented here and in README.md ("Config reference"). An
unknown key or a value of the wrong type fails at start with its dotted name.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .runtime.io import write_text_atomic


@dataclass
class DataConfig:
    path: str = ""                    # folder holding the users and items files
    users_file: str = "users.tsv"     # `user_id<TAB>item item ...`, oldest first
    items_file: str = "items.tsv"     # `item_id<TAB>title[<TAB>abstract]` (one column for images)
    min_seq_len: int = 5              # users with fewer interactions are dropped (as the reference)
    max_seq_len: int = 10             # inputs are the last max_seq_len items, left padded
    max_title_len: int = 30           # tokens kept per title
    max_unk_fraction: float = 0.5     # refuse the run when more titles than this are mostly [UNK]
    with_abstract: bool = False       # append the abstract column to the title
    exclude_history: bool = True      # mask the user's history when ranking (as the reference)
    unknown_items: str = "error"      # item in users file missing from items file: error | drop
    user_fraction: float = 1.0        # share of the users kept (after min_seq_len), in (0, 1]: a seeded subset, listed in users_kept.txt; only their items are kept (ranked)
    fraction_seed: int = 0            # seed of that subset; for one seed a smaller fraction keeps a subset of a larger one's users
    images: str = ""                  # LMDB image store (image items)
    image_size: int = 0               # 0: the backbone's own image size
    missing_image: str = "error"      # item without an image in the store: error | blank
    item_features: str = ""           # id items: `item_id<TAB>feature feature ...` file (in data.path), each feature's vector summed into the item's


@dataclass
class ModelConfig:
    item_encoder: str = "text"        # text | image | id | text+image (peft.method iisan only)
    pretrained: str = ""              # local Hugging Face folder, e.g. pretrained_models/bert-base-uncased
    random_init: bool = False         # build the backbone from its config with random weights
    image_pretrained: str = ""        # text+image items: the image backbone folder (ViT / ViT-MAE)
    pooling: str = "cls"              # cls | mean
    user_encoder: str = "sasrec"      # sasrec | cpc (same network, CPC trains on the last position)
    block: str = "sasrec"             # sasrec (the reference's) | sasrec_bias (0.1's: biased q/k/v/out, FFN dropout) | gpsd (pre-norm RMSNorm, RoPE, SwiGLU)
    tie_embeddings: bool = True       # id items: score targets with the input table (GPSD); false: a separate output table
    embedding_dim: int = 64           # d: item vectors, user vectors, SASRec width
    num_blocks: int = 2               # SASRec transformer blocks
    num_heads: int = 2                # SASRec attention heads
    dropout: float = 0.1              # SASRec dropout


@dataclass
class PeftConfig:
    method: str = "full"              # a name from adapter4rec.peft.available()
    options: dict = field(default_factory=dict)  # the method's options (see README, PEFT methods)


@dataclass
class TrainConfig:
    objective: str = "inbatch"        # bce | inbatch | sampled_softmax (default chosen on real data)
    num_negatives: int = 256          # sampled_softmax: K shared uniform negatives per batch
    with_inbatch: bool = False        # sampled_softmax: add the batch's items as negatives too
    temperature: float = 0.0          # sampled_softmax: 0 scores by dot product; > 0 by cosine / temperature (GPSD: 0.05)
    negatives_per: str = "batch"      # sampled_softmax: the K negatives are shared by the batch | by each sequence (GPSD)
    transfer: str = ""                # with init_from: "" (other domain: item ID tables stay as built) | NT | FT | ST | FT&SF | ST&SF (GPSD)
    epochs: int = 50                  # upper bound; early stopping usually ends sooner
    batch_size: int = 64              # users per step (global, split across DDP ranks)
    optimizer: str = "adamw"          # adam | adamw
    lr: float = 1e-3                  # everything that is neither backbone nor inserted module
    lr_backbone: float = 5e-5         # pretrained item-encoder backbone (when trained)
    lr_peft: float = 1e-3             # inserted modules (adapters, LoRA, prompts, LayerNorm, ...)
    weight_decay: float = 0.0         # AdamW/Adam weight decay
    decay_embeddings: bool = False    # also decay embedding tables (GPSD); never biases or norm gains
    clip_grad_norm: float = 0.0       # 0: no clipping
    patience: int = 5                 # early stopping on validation NDCG@10
    min_delta: float = 0.0            # early stopping: an evaluation resets patience only when it beats the last reset's score by more than this (the best checkpoint is the maximum either way)
    eval_every: int = 1               # epochs between evaluations
    seed: int = 42                    # seeds python, numpy, torch and the batch order
    amp: str = "auto"                 # auto (bf16 on CUDA), bf16, fp32 ("off" in YAML reads as false)
    num_workers: int = 0              # DataLoader workers: training batches and item passes
    init_from: str = ""               # source-domain run folder or checkpoint: marks adaptation
    max_steps_per_epoch: int = 0      # 0: the whole epoch (a cap for quick runs and benchmarks)
    nonfinite: str = "error"          # loss/grad not finite: error | skip
    checkpoint_every: int = 0         # also write checkpoints/latest every N steps (0: per epoch)
    keep_latest: bool = True          # keep checkpoints/latest after the run (false: only best; no resume)
    best_optimizer: bool = False      # keep the optimizer state in checkpoints/best too (it is never resumed)
    # Learning-rate schedule, stepped once per training batch (skipped batches included), its state
    # saved in every checkpoint. none: constant; linear_warmup: linear rise from 0 over
    # warmup_steps, then linear decay to 0 at the last step of the last epoch (as transformers'
    # get_linear_schedule_with_warmup); cosine: the same warmup, then cosine decay to 0.
    scheduler: str = "none"           # none | linear_warmup | cosine
    warmup_steps: int = 0             # batches of linear warmup (linear_warmup, cosine)
    min_lr_ratio: float = 0.0         # cosine: decay to this share of the peak learning rate (GPSD: 0.1)
    progress: bool = True             # progress bars (training, evaluation), on a terminal or notebook only
    tensorboard: bool = False         # log to <run>/tensorboard: step loss, learning rates, metrics
    compile: bool = False             # torch.compile the item encoder (dynamic shapes) on first use


@dataclass
class EvalConfig:
    batch_size: int = 256             # users per scoring chunk
    item_batch_size: int = 256        # items per encoding batch
    k: int = 10                       # cut-off of HR@k / NDCG@k
    metric: str = "ndcg"              # early stopping on valid: ndcg (NDCG@k) | auc (next item vs auc_negatives)
    auc_negatives: int = 100          # auc: negatives per user, sampled with a fixed seed per user
    auc_seed: int = 0                 # auc: seed of those negatives
    auc_users: int = 0                # auc: score only this many users (a fixed seeded subset; 0: all), a cap for quick runs
    auc_train: bool = True            # auc: also the train split's AUC (and loss) each epoch: the generalisation gap


@dataclass
class CacheConfig:
    # Hidden-state cache (adapter4rec/cache): one frozen-backbone pass over all items writes the
    # per-layer states a decoupled method reads; training and evaluation then never run the backbone.
    enabled: bool = True              # iisan reads its states from the cache (false: backbone every step)
    frozen: bool = False              # also serve a frozen, unmodified item backbone from the cache (pooled last layer): peft.method frozen, or any method with towers: [user]
    dir: str = ""                     # cache root; "" -> $ADAPTER4REC_CACHE or ~/.cache/adapter4rec
    dtype: str = "float16"            # float16 | bfloat16 (stored as raw 16-bit words)
    batch_size: int = 256             # items per backbone batch while building
    release_backbone: bool = True     # free the backbone's weights once the cache is attached
    rebuild: bool = False             # rebuild even when the fingerprint matches (cache build --rebuild)
    # Frozen-prefix cache (adapter4rec/cache/prefix.py): for a method whose lowest trainable or
    # inserted module is in backbone layer k > 0, the token states entering layer k are cached once
    # and only layers k.. run in training and evaluation. auto: wherever that holds; off: never.
    prefix: str = "auto"              # auto | off: frozen-prefix cache for methods in upper layers only


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(value: Any, typ: Any, name: str) -> Any:
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is float and isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if typ is dict and value is None:
        return {}
    if typ is str and value is False and "off" in CHOICES.get(name, ()):
        return "off"  # YAML 1.1 reads a bare off as false
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"config key '{name}' must be {typ.__name__}, got {type(value).__name__} {value!r}")
    return value


def _merge(obj: Any, data: dict, prefix: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    known = {f.name: f for f in fields(obj)}
    hints = typing.get_type_hints(type(obj))
    for key, value in data.items():
        name = prefix + str(key)
        if key not in known:
            raise ConfigError(f"unknown config key '{name}' (known: {', '.join(known)})")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            _merge(getattr(obj, key), value, name + ".")
        elif obj.__class__ is PeftConfig and key == "options":
            getattr(obj, key).update(_coerce(value, dict, name))
        else:
            setattr(obj, key, _coerce(value, typ, name))


def _set(data: dict, dotted: str) -> None:
    if "=" not in dotted:
        raise ConfigError(f"--set expects a.b=value, got {dotted!r}")
    key, raw = dotted.split("=", 1)
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set expects a.b=value, got {dotted!r}")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        raise ConfigError(f"--set '{key}': the value {raw!r} is not valid YAML (quote a string, "
                          "close brackets)") from None
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def _files(p: Path, chain: tuple[Path, ...] = ()) -> list[tuple[Path, Any]]:
    """``p`` and its ``extends`` bases as (file, keys), in the order they apply: bases first.

    Each file is merged on its own (not as one combined dict) so that an error names the file that
    holds the bad key. ``chain`` is the files extending ``p``, to report a cycle instead of recursing.
    """
    if p.resolve() in [c.resolve() for c in chain]:
        raise ConfigError("config extends cycle: " + " -> ".join(str(c) for c in chain + (p,)))
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    refs = data.pop("extends", []) if isinstance(data, dict) else []  # non-mapping: _merge says so
    if isinstance(refs, str):
        refs = [refs]
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise ConfigError(f"{p}: 'extends' must be a file name or a list of file names, got {refs!r}")
    out: list[tuple[Path, Any]] = []
    for ref in refs:
        base = p.parent / ref  # relative to the extending file, not to the working directory
        if not base.is_file():
            raise ConfigError(f"{p}: extends {ref!r}, but {base} is not a file")
        out += _files(base, chain + (p,))
    return out + [(p, data)]


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> Config:
    """Defaults, then ``base`` (a dict), then the YAML file (after its ``extends`` bases), then
    ``--set`` overrides."""
    cfg = Config()
    if base:
        _merge(cfg, base, "")
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        for f, keys in _files(p):
            try:
                _merge(cfg, keys, "")
            except ConfigError as e:
                raise ConfigError(f"{f}: {e}") from None
    if overrides:
        data: dict = {}
        for o in overrides:
            _set(data, o)
        _merge(cfg, data, "")
    _expand_environment(cfg)
    validate(cfg)
    return cfg


_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def _expand_environment(cfg: Config) -> None:
    """``${NAME}`` and ``${NAME:-default}`` in string values take the environment's value, so a
    config names no machine's own paths (e.g. ``data.path: ${ADAPTER4REC_DATASETS:-Dataset}/x``)."""
    for section in fields(cfg):
        obj = getattr(cfg, section.name)
        for f in fields(obj):
            value = getattr(obj, f.name)
            if not isinstance(value, str) or "${" not in value:
                continue

            def one(m, key=f"{section.name}.{f.name}"):
                if m.group(1) in os.environ:
                    return os.environ[m.group(1)]
                if m.group(2) is not None:
                    return m.group(2)
                raise ConfigError(f"config key '{key}' uses ${{{m.group(1)}}}, which is not set: "
                                  f"export {m.group(1)}=... or give the key with --set {key}=...")
            setattr(obj, f.name, _VAR.sub(one, value))


CHOICES = {
    "data.unknown_items": ("error", "drop"), "data.missing_image": ("error", "blank"),
    "model.item_encoder": ("text", "image", "id", "text+image"), "model.pooling": ("cls", "mean"),
    "model.user_encoder": ("sasrec", "cpc"), "model.block": ("sasrec", "sasrec_bias", "gpsd"),
    "train.objective": ("bce", "inbatch", "sampled_softmax", "discriminative"),
    "train.optimizer": ("adam", "adamw"), "train.negatives_per": ("batch", "sequence"),
    "train.transfer": ("", "NT", "FT", "ST", "FT&SF", "ST&SF"), "eval.metric": ("ndcg", "auc"),
    "train.amp": ("auto", "bf16", "fp32"), "train.nonfinite": ("error", "skip"),
    "train.scheduler": ("none", "linear_warmup", "cosine"),
    "cache.dtype": ("float16", "bfloat16"), "cache.prefix": ("auto", "off"),
}


def validate(cfg: Config) -> None:
    for dotted, choices in CHOICES.items():
        sec, key = dotted.split(".")
        value = getattr(getattr(cfg, sec), key)
        if value not in choices:
            raise ConfigError(f"config key '{dotted}' must be one of {', '.join(choices)}; got {value!r}")
    for dotted in ("data.max_seq_len", "data.min_seq_len", "data.max_title_len", "train.batch_size",
                   "train.epochs", "model.embedding_dim", "eval.k", "eval.batch_size"):
        sec, key = dotted.split(".")
        if getattr(getattr(cfg, sec), key) < 1:
            raise ConfigError(f"config key '{dotted}' must be at least 1, got {getattr(getattr(cfg, sec), key)}")
    for dotted in ("train.patience", "train.eval_every", "model.num_heads", "eval.item_batch_size"):
        sec, key = dotted.split(".")
        if getattr(getattr(cfg, sec), key) < 1:
            raise ConfigError(f"config key '{dotted}' must be at least 1, got {getattr(getattr(cfg, sec), key)}")
    for dotted in ("train.checkpoint_every", "train.warmup_steps", "train.max_steps_per_epoch",
                   "train.num_workers", "train.clip_grad_norm", "train.weight_decay",
                   "train.num_negatives", "model.num_blocks"):
        sec, key = dotted.split(".")
        if getattr(getattr(cfg, sec), key) < 0:
            raise ConfigError(f"config key '{dotted}' must not be negative, got {getattr(getattr(cfg, sec), key)}")
    if cfg.data.min_seq_len < 4:
        raise ConfigError("config key 'data.min_seq_len' must be at least 4: the last two items are "
                          "held out (valid, test), and a training pair needs two more; got "
                          f"{cfg.data.min_seq_len}")
    if not cfg.train.min_delta >= 0.0 or math.isinf(cfg.train.min_delta):  # NaN fails this too
        raise ConfigError(f"config key 'train.min_delta' must be a finite number >= 0, got {cfg.train.min_delta}")
    if not 0.0 < cfg.data.user_fraction <= 1.0:  # NaN fails this too
        raise ConfigError(f"config key 'data.user_fraction' must be in (0, 1], got {cfg.data.user_fraction}")
    if not 0.0 <= cfg.data.max_unk_fraction <= 1.0:
        raise ConfigError(f"config key 'data.max_unk_fraction' must be in [0, 1], got {cfg.data.max_unk_fraction}")
    for f in fields(cfg.train):  # a NaN or infinite float setting is never meant
        value = getattr(cfg.train, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config key 'train.{f.name}' must be a finite number, got {value}")
    for dotted in ("train.lr", "train.lr_backbone", "train.lr_peft"):
        if getattr(cfg.train, dotted.split(".")[1]) < 0:
            raise ConfigError(f"config key '{dotted}' must not be negative (a negative learning rate "
                              f"climbs the loss), got {getattr(cfg.train, dotted.split('.')[1])}")
    if cfg.train.objective == "sampled_softmax" and cfg.train.num_negatives < 1:
        raise ConfigError("config key 'train.num_negatives' must be at least 1 with train.objective "
                          "sampled_softmax (with none the loss is 0 and nothing is learned)")
    if cfg.cache.batch_size < 1:
        raise ConfigError(f"config key 'cache.batch_size' must be at least 1, got {cfg.cache.batch_size}")
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise ConfigError(f"config key 'model.dropout' must be in [0, 1), got {cfg.model.dropout}")
    if cfg.model.embedding_dim % cfg.model.num_heads:
        raise ConfigError("model.embedding_dim must be divisible by model.num_heads")
    _validate_gpsd(cfg)
    if cfg.model.item_encoder != "id" and not cfg.model.pretrained:
        raise ConfigError("model.pretrained must name a local model folder for text/image items")


def _validate_gpsd(cfg: Config) -> None:
    """The keys of GPSD's parts (docs/gpsd.md): each combination that cannot work is refused."""
    t, m = cfg.train, cfg.model
    if t.temperature < 0:
        raise ConfigError(f"config key 'train.temperature' must not be negative, got {t.temperature}")
    if not 0.0 <= t.min_lr_ratio <= 1.0:
        raise ConfigError(f"config key 'train.min_lr_ratio' must be in [0, 1], got {t.min_lr_ratio}")
    if cfg.eval.auc_users < 0:
        raise ConfigError(f"config key 'eval.auc_users' must not be negative, got {cfg.eval.auc_users}")
    if cfg.eval.auc_negatives < 1:
        raise ConfigError(f"config key 'eval.auc_negatives' must be at least 1, got {cfg.eval.auc_negatives}")
    if t.objective == "discriminative" and m.block != "gpsd":
        raise ConfigError("config key 'train.objective' is discriminative, which needs model.block: "
                          f"gpsd (a segment embedding marks the candidate); got model.block {m.block!r}")
    if t.objective == "discriminative" and cfg.eval.metric != "auc":
        raise ConfigError("config key 'eval.metric' must be auc with train.objective discriminative "
                          "(its head scores candidates: there is no full ranking)")
    if t.objective == "discriminative" and m.user_encoder != "sasrec":
        raise ConfigError("config key 'model.user_encoder' must be sasrec with train.objective "
                          "discriminative")
    if (t.objective == "discriminative" or t.temperature > 0) and t.with_inbatch:
        raise ConfigError("config key 'train.with_inbatch' cannot be combined with train.temperature "
                          "> 0 or train.objective discriminative")
    if not m.tie_embeddings and m.item_encoder != "id":
        raise ConfigError("config key 'model.tie_embeddings' can be false only with "
                          "model.item_encoder: id (a separate output ID table)")
    if cfg.data.item_features and m.item_encoder != "id":
        raise ConfigError("config key 'data.item_features' is read only with model.item_encoder: id")
    if t.transfer in ("FT", "ST", "FT&SF", "ST&SF") and not t.init_from:
        raise ConfigError(f"config key 'train.transfer' is {t.transfer}, which needs train.init_from "
                          "(the generative run to transfer from)")
    if t.transfer == "NT" and t.init_from:
        raise ConfigError("config key 'train.transfer' is NT (no transfer) but train.init_from is "
                          f"{t.init_from!r}: clear one of them")


# train keys that change how a run goes, not what it computes: a finished run stays valid across
# them (suites) and a run resumes across them (the trainer)
NOT_COMPUTED = ("train.progress", "train.num_workers", "train.checkpoint_every")


def read_run_config(folder: str | Path) -> dict | None:
    """A run folder's config.yaml as it was saved: a plain mapping, not a ``Config`` (a run made
    by an older version may lack keys, and what it holds is compared, not run); None without
    one; a one-line ``ConfigError`` naming the file when it cannot be read or is no mapping."""
    path = Path(folder) / "config.yaml"
    if not path.is_file():
        return None
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot be read ({str(e).splitlines()[0]})") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{path}: not a mapping")
    return saved


def save_config(cfg: Config, path: str | Path) -> None:
    """The fully resolved config (no ``extends``): a run folder's copy stands on its own. Atomic, so
    a kill mid-write never leaves a half config.yaml that a resume would then fail to read."""
    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def reference_markdown() -> str:
    """The config reference table of README.md, made from the field comments above (one home)."""
    import inspect
    import re

    src = inspect.getsource(inspect.getmodule(reference_markdown))
    rows = ["| key | default | meaning |", "|---|---|---|"]
    section = None
    names = {"DataConfig": "data", "ModelConfig": "model", "PeftConfig": "peft",
             "TrainConfig": "train", "EvalConfig": "eval", "CacheConfig": "cache"}
    for line in src.splitlines():
        m = re.match(r"class (\w+Config):", line)
        if m:
            section = names.get(m.group(1))
            continue
        m = re.match(r"    (\w+): [\w\[\], |]+ = (.+?)\s+# (.*)", line)
        if section and m:
            default = m.group(2).replace("field(default_factory=dict)", "{}")
            rows.append(f"| `{section}.{m.group(1)}` | `{default}` | {m.group(3).replace(' | ', ' / ')} |")
    return "\n".join(rows)

"""The trainer: one loop for pretraining and adaptation, on CPU, one GPU, or N GPUs via torchrun.

Run folder: config.yaml (resolved), train.log, metrics.jsonl (one line per evaluation),
metrics.json (final), checkpoints/{latest,best}/ (weights + trainer state), and
checkpoints/nonfinite/ when a non-finite loss or gradient stopped the run. Only rank 0 writes.

Reliability: ``train(..., resume=True)`` continues from checkpoints/latest bit-identically on CPU
(weights, optimizer, scheduler, every rank's RNG states, the sampler position and all counters are
restored); under DDP each rank's loss is weighted so that the gradient is the one-process gradient
of the global batch (see ``data.dataset.TrainBatches`` and ``model.Recommender.forward``).
"""
from __future__ import annotations

import json
import logging
import math
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import peft
from ..cache import attach as attach_cache
from ..config import Config, load_config, save_config
from ..data.dataset import RecData, TrainBatches, build_data
from ..errors import Adapter4RecError, CheckpointError
from ..evaluation.evaluator import evaluate, unreachable_targets
from ..model import build_model
from . import distributed as dist
from .checkpoint import (find_checkpoint, load_checkpoint, load_into, load_weights, rng_state,
                         remove_partial_writes, save_checkpoint, set_rng_state,
                         write_text_atomic)

log = logging.getLogger("adapter4rec")

# Item-specific parameters: they belong to the source domain's items and never transfer.
ITEM_TABLES = ("item_encoder.table.",)


class TrainingError(Adapter4RecError):
    pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (pytest and notebooks replace it; a handler bound
    to an old one would write to a closed file)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(output: Path | None = None) -> None:
    log.setLevel(logging.INFO)
    for h in [h for h in log.handlers if type(h) is logging.StreamHandler]:  # bound to a stream
        log.removeHandler(h)
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        h = _Stderr()
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(h)
    for h in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
        log.removeHandler(h)
        h.close()
    if output is not None and dist.is_main():
        fh = logging.FileHandler(output / "train.log", encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(fh)
    if not dist.is_main():
        log.setLevel(logging.WARNING)


def amp_dtype(cfg: Config, device: torch.device):
    """bf16 autocast or None (fp32). ``auto``: bf16 on CUDA and on CPUs with bf16 matrix units
    (AMX-BF16 / AVX512-BF16), where it is about 1.7x faster; fp32 on other CPUs."""
    from ..encoders.backbone import cpu_bf16_units

    if cfg.train.amp == "fp32":
        return None
    if cfg.train.amp == "bf16" or device.type == "cuda":
        return torch.bfloat16
    units = cpu_bf16_units()
    if not getattr(amp_dtype, "_said", None) == (cfg.train.amp, units):
        amp_dtype._said = (cfg.train.amp, units)  # say it once per process, not per evaluation
        log.info("train.amp auto: %s", f"bf16 autocast (this CPU has {units})" if units else
                 "fp32 (this CPU has no bf16 matrix units: bf16 would be slower)")
    return torch.bfloat16 if units else None


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
    # iisan (and frozen with cache.frozen) read cached hidden states instead of running the backbone
    content = attach_cache(cfg, model, data, content)
    return data, model, content, summary


def param_groups(model, cfg: Config) -> list[dict]:
    """Three roles, each with its own learning rate: backbone, inserted modules, the rest."""
    tuned = getattr(model, "peft_tuned", set())
    groups = {"backbone": [], "peft": [], "rest": []}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        role = ("peft" if n in tuned or "peft_" in n else
                "backbone" if n.startswith("item_encoder.backbone.") else "rest")
        groups[role].append(p)
    lrs = {"backbone": cfg.train.lr_backbone, "peft": cfg.train.lr_peft, "rest": cfg.train.lr}
    return [{"params": ps, "lr": lrs[r], "name": r} for r, ps in groups.items() if ps]


def make_scheduler(optimizer, t, total_steps: int):
    """The LambdaLR for ``train.scheduler`` (None for ``none``), stepped once per batch.

    linear_warmup: lr x step/warmup during warmup, then linear decay to 0 at ``total_steps``;
    cosine: the same warmup, then half a cosine down to 0 (transformers' schedules of those names).
    """
    if t.scheduler == "none":
        return None
    warm, total = t.warmup_steps, max(total_steps, 1)

    def factor(step: int) -> float:
        if step < warm:
            return step / max(1, warm)
        progress = min(1.0, (step - warm) / max(1, total - warm))
        if t.scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _fresh_start(output: Path) -> None:
    """A new run in ``output``: what an earlier run left there must not mix in (nor be resumed)."""
    old = [p for p in (output / "checkpoints", output / "metrics.jsonl", output / "metrics.json")
           if p.exists()]
    if old:
        log.warning("new run in %s: removing the previous run's %s", output,
                    ", ".join(p.name for p in old))
    for p in old:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def _keep_records_before(path: Path, epoch: int) -> None:
    """Drop metrics.jsonl records of epochs >= ``epoch`` (written after the checkpoint we resume)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["epoch"] < epoch:
                keep.append(line)
        except (ValueError, KeyError, TypeError):  # a line cut by the kill
            pass
    write_text_atomic(path, "".join(line + "\n" for line in keep))


def train(cfg: Config, output: str | Path, resume: bool = False, data: RecData | None = None,
          content=None) -> dict:
    """Train under ``cfg`` into ``output``; returns the final metrics dict.

    ``resume``: continue from ``output``/checkpoints/latest (a run killed at any point continues
    exactly where its last checkpoint left it: on CPU the result is bit-identical to an
    uninterrupted run). Without ``resume`` the folder's previous checkpoints and metrics go.
    """
    device = dist.setup()
    output = Path(output)
    if dist.is_main():
        output.mkdir(parents=True, exist_ok=True)
        if not resume:
            _fresh_start(output)
        remove_partial_writes(output)
        remove_partial_writes(output / "checkpoints")
    dist.barrier()
    setup_logging(output)
    seed_everything(cfg.train.seed)
    if dist.is_main():
        save_config(cfg, output / "config.yaml")
    data, model, content, summary = prepare(cfg, data, content)
    model.to(device)
    for split in ("valid", "test"):
        n = unreachable_targets(data, split)
        if n and cfg.data.exclude_history and dist.is_main():
            log.warning("%s: %d of %d targets are in the user's own history and, with "
                        "data.exclude_history, can never be hit", split, n, data.n_users)
    t = cfg.train
    opt_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(param_groups(model, cfg), weight_decay=t.weight_decay)
    amp = amp_dtype(cfg, device)
    batches = TrainBatches(data, content, t.batch_size, t.objective, t.num_negatives, t.seed,
                           dist.rank(), dist.world(), last_only=cfg.model.user_encoder == "cpc")
    steps = len(batches) if not t.max_steps_per_epoch else min(len(batches), t.max_steps_per_epoch)
    scheduler = make_scheduler(optimizer, t, t.epochs * steps)
    # Everything the loop needs to continue exactly: the sampler position (epoch, step within the
    # epoch; batches are drawn from (seed, epoch, step)), the running loss of the epoch, the
    # early-stopping counters, the best result so far.
    state = {"epoch": 0, "step": 0, "global_step": 0, "best": -1.0, "best_epoch": -1,
             "best_valid": {}, "best_test": {}, "bad_evals": 0, "skipped": 0, "train_seconds": 0.0,
             "epoch_loss": 0.0, "epoch_batches": 0}
    if resume:
        found = find_checkpoint(output / "checkpoints" / "latest")
        if found is None:
            log.warning("resume: no checkpoint in %s yet; starting from the beginning",
                        output / "checkpoints")
        else:
            weights, saved = load_checkpoint(found)
            _check_position(saved, steps, found)
            load_into(model, weights, str(found))
            optimizer.load_state_dict(saved["optimizer"])
            if scheduler is not None and saved.get("scheduler"):
                scheduler.load_state_dict(saved["scheduler"])
            _restore_rng(saved["rng"])
            state.update(saved["trainer"])
            if dist.is_main():
                _keep_records_before(output / "metrics.jsonl", state["epoch"])
            log.info("resumed from %s: epoch %d step %d (global step %d)", found, state["epoch"],
                     state["step"], state["global_step"])
    ddp = model
    if dist.world() > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    writer = _tensorboard(output)
    log.info("%s: %d trainable of %d parameters", cfg.peft.method, summary["trainable"], summary["total"])

    def checkpoint(name: str) -> None:
        rngs = dist.all_gather_object(rng_state())  # every rank's generators (dropout differs)
        if dist.is_main():
            save_checkpoint(output / "checkpoints" / name, model, {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": rngs, "trainer": dict(state), "global_step": state["global_step"],
                "sampler": {"seed": t.seed, "epoch": state["epoch"], "step": state["step"],
                            "steps_per_epoch": steps, "batch_size": t.batch_size,
                            "world": dist.world()}})
        dist.barrier()

    params = [p for g in optimizer.param_groups for p in g["params"]]
    # The DataLoader's own generator: creating its iterator must not draw from the global torch
    # RNG (it would shift dropout after a mid-epoch resume). Batches never use it.
    loader_rng = torch.Generator()
    stop = state["bad_evals"] >= t.patience
    while state["epoch"] < t.epochs and not stop:
        epoch = state["epoch"]
        batches.set_epoch(epoch)
        start = state["step"]
        loader_rng.manual_seed(t.seed * 100_003 + epoch)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(batches, range(start, steps)), batch_size=None,
            shuffle=False, num_workers=t.num_workers, persistent_workers=False,
            pin_memory=device.type == "cuda", generator=loader_rng)
        model.train()
        t0 = time.time()
        bar = tqdm(loader, desc=f"epoch {epoch}", total=steps - start,
                   disable=not (t.progress and dist.is_main()), leave=False)
        for batch in bar:
            batch = _to(batch, device)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = ddp(batch)
            # Each objective averages over this rank's trained positions. Weighted by this rank's
            # share of the global batch's positions and summed over ranks, that is the global
            # batch's mean: the loss (and, with DDP averaging gradients over `world` ranks, the
            # gradient) of one process running the whole batch.
            n_local = (batch["tgt"] > 0).sum()
            share = n_local.float() / batch["global_positions"].clamp(min=1).float()
            zero = loss.new_zeros(())
            step_loss = dist.all_reduce_sum(torch.where(n_local > 0, loss.detach().float() * share, zero))
            updated = bool(torch.isfinite(step_loss))  # the same on every rank
            if not updated:
                _nonfinite(t, state, "loss", checkpoint, steps)
            else:
                torch.where(n_local > 0, loss * (share * dist.world()), zero).backward()
                norm = torch.nn.utils.clip_grad_norm_(
                    params, t.clip_grad_norm if t.clip_grad_norm > 0 else math.inf)
                updated = bool(torch.isfinite(norm))  # gradients are all-reduced: same everywhere
                if not updated:
                    _nonfinite(t, state, "gradient", checkpoint, steps)
                else:
                    optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            if updated:
                state["epoch_loss"] += float(step_loss)
                state["epoch_batches"] += 1
            state["step"] += 1
            state["global_step"] += 1
            if updated:
                bar.set_postfix(loss=f"{state['epoch_loss'] / state['epoch_batches']:.4f}")
            if t.checkpoint_every and state["global_step"] % t.checkpoint_every == 0 \
                    and state["step"] < steps:  # (the end of the epoch is saved below)
                checkpoint("latest")
        state["train_seconds"] += time.time() - t0
        record = {"epoch": epoch, "global_step": state["global_step"],
                  "train_loss": state["epoch_loss"] / max(state["epoch_batches"], 1),
                  "epoch_seconds": round(time.time() - t0, 3)}
        state.update(epoch=epoch + 1, step=0, epoch_loss=0.0, epoch_batches=0)
        if state["epoch"] % t.eval_every == 0 or state["epoch"] == t.epochs:
            res = evaluate(model, content, data, device, k=cfg.eval.k, batch_size=cfg.eval.batch_size,
                           item_batch_size=cfg.eval.item_batch_size,
                           exclude_history=cfg.data.exclude_history, amp_dtype=amp,
                           num_workers=t.num_workers)
            record.update(res)
            key = f"NDCG@{cfg.eval.k}"
            if res["valid"][key] > state["best"]:
                state.update(best=res["valid"][key], best_epoch=epoch, best_valid=res["valid"],
                             best_test=res["test"], bad_evals=0)
                checkpoint("best")
            else:
                state["bad_evals"] += 1
            stop = state["bad_evals"] >= t.patience
            log.info("epoch %d loss %.4f valid %s test %s", epoch, record["train_loss"],
                     _fmt(res["valid"]), _fmt(res["test"]))
            if writer:
                for split in ("valid", "test"):
                    for m, v in res[split].items():
                        writer.add_scalar(f"{split}/{m}", v, epoch)
        if writer:
            writer.add_scalar("train/loss", record["train_loss"], epoch)
        if dist.is_main():
            with open(output / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        checkpoint("latest")
    final = {"best_epoch": state["best_epoch"], "valid": state["best_valid"], "test": state["best_test"],
             "trainable_params": summary["trainable"], "total_params": summary["total"],
             "train_seconds": round(state["train_seconds"], 3), "skipped_batches": state["skipped"],
             "global_steps": state["global_step"], "peft": summary}
    best = output / "checkpoints" / "best" / "model.safetensors"
    if best.is_file():
        final["checkpoint_mb"] = round(best.stat().st_size / 2**20, 3)
    if dist.is_main():
        write_text_atomic(output / "metrics.json", json.dumps(final, indent=2))
    log.info("best epoch %d: valid %s test %s", final["best_epoch"], _fmt(final["valid"]), _fmt(final["test"]))
    if writer:
        writer.close()
    return final


def _check_position(saved: dict, steps: int, where: Path) -> None:
    """A mid-epoch position only means something with the same batches per epoch."""
    s = saved.get("sampler") or {}
    if saved["trainer"].get("step", 0) and s.get("steps_per_epoch", steps) != steps:
        raise CheckpointError(
            f"{where} stopped at step {saved['trainer']['step']} of an epoch of "
            f"{s['steps_per_epoch']} batches (batch size {s.get('batch_size')}), but this config "
            f"gives {steps} batches per epoch: resume with the run's own train.batch_size and "
            "train.max_steps_per_epoch")


def _restore_rng(saved) -> None:
    """Every rank gets back its own generators (a list, one per rank, as ``checkpoint`` saves)."""
    states = saved if isinstance(saved, list) else [saved]
    if len(states) != dist.world():
        log.warning("resume: the checkpoint holds the RNG states of %d process(es), this run has "
                    "%d: dropout will not replay exactly", len(states), dist.world())
    set_rng_state(states[dist.rank() % len(states)])


def _nonfinite(t, state, what: str, checkpoint, steps: int) -> None:
    """Skip this batch (``train.nonfinite: skip``: counted, logged), or save the state before this
    update in checkpoints/nonfinite and raise."""
    where = (f"global step {state['global_step'] + 1} (epoch {state['epoch']}, batch "
             f"{state['step'] + 1} of {steps})")
    if t.nonfinite == "skip":
        state["skipped"] += 1
        if dist.is_main():  # every rank takes the same decision
            log.warning("non-finite %s at %s: batch skipped (%d so far)", what, where, state["skipped"])
        return
    checkpoint("nonfinite")
    raise TrainingError(f"non-finite {what} at {where}; the model and optimizer before this update "
                        "are saved in checkpoints/nonfinite. Lower the learning rate, set "
                        "train.clip_grad_norm, or set train.nonfinite: skip to skip such batches")


def _to(batch: dict, device) -> dict:
    out = {}
    for k, v in batch.items():
        out[k] = _to(v, device) if isinstance(v, dict) else v.to(device, non_blocking=True)
    return out


def _fmt(m: dict) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in m.items())


def _tensorboard(output: Path):
    if not dist.is_main():
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional extra
        return None
    return SummaryWriter(str(output / "tensorboard"))


def evaluate_run(run: str | Path, split: str = "test", overrides: list[str] | None = None) -> dict:
    """Rebuild a run from its folder (config + backbone + init_from + its weights) and evaluate."""
    run = Path(run)
    cfg = load_config(run / "config.yaml", overrides)
    device = dist.setup()
    setup_logging()
    data, model, content, _ = prepare(cfg)
    load_into(model, load_weights(run / "checkpoints" / "best"), str(run))
    model.to(device)
    splits = ("valid", "test") if split == "both" else (split,)
    return evaluate(model, content, data, device, splits, cfg.eval.k, cfg.eval.batch_size,
                    cfg.eval.item_batch_size, cfg.data.exclude_history, amp_dtype(cfg, device),
                    num_workers=cfg.train.num_workers)

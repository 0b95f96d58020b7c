"""The trainer: one loop for pretraining and adaptation, on CPU, one GPU, or N GPUs via torchrun.

    Trainer(cfg, output).setup(resume=False)  # run folder, logging, seed, build_run, optimiser
        .train()                              # epochs -> _train_epoch (_step ...) -> _evaluate
                                              # -> save_checkpoint; returns the final metrics

``train(cfg, output)`` does both in one call. Run folder: config.yaml (resolved), train.log,
metrics.jsonl (one line per evaluation), metrics.json (final), checkpoints/{latest,best}/ (weights +
trainer state), ranks.npz (every user's valid and test rank at the best epoch, for paired tests
across runs), resources.json (peak memory and seconds per epoch: never bit-identical, so kept out of
metrics.json), and checkpoints/nonfinite/ when a non-finite loss or gradient stopped the run. Only
rank 0 writes.

Reliability: ``train(..., resume=True)`` continues from checkpoints/latest bit-identically on CPU
(weights, optimizer, scheduler, every rank's RNG states, the sampler position and all counters are
restored); under DDP each rank's loss is weighted so that the gradient is the one-process gradient
of the global batch (see ``data.batching.TrainBatches`` and ``model.Recommender.forward``).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import NOT_COMPUTED, Config, read_run_config, save_config
from ..data.batching import TrainBatches
from ..data.split import RecData, check_folder
from ..errors import Adapter4RecError, CheckpointError, ConfigError, StorageError
from ..evaluation.evaluator import log_unreachable
from ..pipeline import (MISSING, RUN_FILE, RUN_FORMAT, RUN_FORMAT_VERSION, build_run, change_text,
                        check_fingerprints, config_changes, dotted_get, read_run_file,
                        start_precisions)
from ..runtime import distributed as dist
from ..runtime.io import FolderLock, atomic_write, load_into, write_text_atomic
from ..runtime.logging import progress_enabled, setup_logging
from ..runtime.precision import cpu_name
from ..runtime.provenance import environment
from ..runtime.seed import rng_state, seed_everything, set_rng_state
from .callbacks import Callback, TensorBoard
from .checkpoint import (FORMAT_VERSION, find_checkpoint, load_checkpoint, remove_partial_writes,
                         save_checkpoint)
from .optim import make_optimizer, make_scheduler

log = logging.getLogger("adapter4rec")

RANKS_FILE = "ranks.npz"  # valid / test: float32 per-user ranks (inf: never a hit); epoch
RESOURCES_FILE = "resources.json"  # peak memory and seconds, per epoch
# train keys a resume may change (``Trainer._check_train_settings``): how the run goes, what it
# keeps, and when it stops (epochs only without a schedule, whose length they set); amp and
# init_from have their own checks (the precision of every start; the source's fingerprint)
RESUME_FREE = tuple(k.split(".")[1] for k in NOT_COMPUTED) + (
    "tensorboard", "compile", "keep_latest", "best_optimizer", "patience", "min_delta",
    "eval_every", "amp", "init_from")
# keys outside train.* (and the fingerprints) a resume may not change either: eval's that make the
# validation score (the best epoch so far is kept with its score, and the next epochs are compared
# with it; auc_* only under eval.metric auc, the one score they enter), which items are ranked,
# the images' size, and the cache's keys that set the states the steps read (their rounding)
RESUME_FIXED = ("eval.k", "eval.metric", "data.exclude_history", "data.image_size",
                "cache.enabled", "cache.frozen", "cache.dtype", "cache.prefix")
RESUME_FIXED_AUC = ("eval.auc_negatives", "eval.auc_seed", "eval.auc_users")


class TrainingError(Adapter4RecError):
    pass


@dataclass
class TrainState:
    """Everything the loop needs to continue exactly (saved in every checkpoint as a dict): the
    sampler position (epoch, step within the epoch; batches are drawn from (seed, epoch, step)),
    the running loss of the epoch, the early-stopping counters, the best result so far."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    best: float = -1.0
    best_epoch: int = -1
    best_valid: dict = field(default_factory=dict)
    best_test: dict = field(default_factory=dict)
    bad_evals: int = 0
    patience_best: float = -1.0  # the score of the last patience reset
    skipped: int = 0
    train_seconds: float = 0.0
    epoch_loss: float = 0.0
    epoch_batches: int = 0


class Trainer:
    def __init__(self, cfg: Config, output: str | Path, data: RecData | None = None, content=None,
                 callbacks: list[Callback] | None = None, model=None):
        self.cfg, self.output = cfg, Path(output)
        self._given = (data, content)
        self._model = model  # a model built by the caller: the one trained
        self.state = TrainState()
        self.lock = None
        self.callbacks = list(callbacks or [])
        self.should_stop = False  # a callback may end the run after the current epoch

    # ------------------------------------------------------------------------------------ setup

    def setup(self, resume: bool = False) -> "Trainer":
        """Prepare the run folder, build the run, the optimiser and the batches; with ``resume``
        continue from checkpoints/latest. Without it the folder's previous run goes."""
        cfg, output, t = self.cfg, self.output, self.cfg.train
        # the run's own peak memory, not that of earlier runs in this process (a suite with one job
        # trains its runs one after another in one process)
        self.rss_scope = _reset_peak_rss()
        device = dist.setup()
        if self._given[0] is None:  # before the run folder exists: a wrong path leaves nothing
            check_folder(cfg.data.path, cfg.data.users_file, cfg.data.items_file)
        if dist.is_main():
            if output.exists() and not output.is_dir():
                raise ConfigError(f"the run folder {output} is a file, not a folder")
            try:
                output.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StorageError(f"{output}: cannot create the run folder ({e.strerror})") from None
            self.lock = FolderLock(output).acquire()  # one writer per run folder
            if is_run_folder(output):  # delete nothing in a folder that holds no run
                if not resume:
                    _fresh_start(output)
                remove_partial_writes(output)
                remove_partial_writes(output / "checkpoints")
        dist.barrier()
        setup_logging(output)
        seed_everything(t.seed)
        self.run = build_run(cfg, *self._given, device=device, model=self._model)
        self.fingerprints = self.run.fingerprints()
        self.data_path = cfg.data.path
        if self._given[0] is not None and not cfg.data.path:
            # data given in Python (e.g. from frames): kept in the run folder, so that the run can
            # be evaluated and resumed later from its config.yaml alone
            self.data_path = str(output / "data")
            if dist.is_main() and not resume:
                self.run.data.save(self.data_path)
        self.model, data = self.run.model, self.run.data
        if dist.is_main():
            log_unreachable(data, cfg.data.exclude_history)
        if t.compile:  # the item path (side network or encoder); compiled lazily on first call
            enc = self.model.item_encoder
            (enc.peft_side if enc.peft_side is not None else enc).compile(dynamic=True)
        self.optimizer = make_optimizer(self.model, cfg)
        self.batches = TrainBatches(data, self.run.content, t.batch_size, t.objective,
                                    t.num_negatives, t.seed, dist.rank(), dist.world(),
                                    last_only=cfg.model.user_encoder == "cpc",
                                    negatives_per=t.negatives_per, with_inbatch=t.with_inbatch)
        self.steps = len(self.batches) if not t.max_steps_per_epoch else min(len(self.batches),
                                                                             t.max_steps_per_epoch)
        self.scheduler = make_scheduler(self.optimizer, t, t.epochs * self.steps)
        if resume:
            self._check_precision()
            self.load_checkpoint()
        if dist.is_main():  # only now that every check has passed: config.yaml and run.json
            self._write_run_files(resume)
        self.ddp = self.model
        if dist.world() > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        if t.tensorboard and dist.is_main():
            self.callbacks.append(TensorBoard(output / "tensorboard"))
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        # The DataLoader's own generator: creating its iterator must not draw from the global torch
        # RNG (it would shift dropout after a mid-epoch resume). Batches never use it.
        self.loader_rng = torch.Generator()
        s = self.run.summary
        log.info("%s: %d trainable of %d parameters", cfg.peft.method, s["trainable"], s["total"])
        return self

    @property
    def precision(self) -> str:
        """What train.amp resolved to on this machine (auto: bf16 on a CPU with bf16 units, fp32
        on one without): part of what produced the numbers, so run.json records it."""
        return "bf16" if self.run.amp is not None else "fp32"

    def _check_precision(self) -> None:
        """A run never changes precision halfway (resumed on another machine, with amp auto)."""
        began = start_precisions(read_run_file(self.output))
        if began and began[0] != self.precision:
            raise ConfigError(
                f"{self.output / RUN_FILE}: this run began in {began[0]} and would go on in "
                f"{self.precision} here (train.amp: {self.cfg.train.amp}); set train.amp: {began[0]} "
                "to resume it as it began, or start it anew in another output folder")

    def _write_run_files(self, resume: bool) -> None:
        """config.yaml (resolved: every PEFT option, defaults included) and run.json (what produced
        the run and what it is computed from), each written atomically."""
        cfg = copy.deepcopy(self.cfg)
        cfg.peft.options = dict(self.run.summary["options"])
        if self.data_path != cfg.data.path:  # the data saved in the run folder (already subsampled)
            cfg.data.path, cfg.data.users_file, cfg.data.items_file = self.data_path, "users.tsv", "items.tsv"
            cfg.data.user_fraction = 1.0
        save_config(cfg, self.output / "config.yaml")
        self.run.data.save_kept_users(self.output)  # users_kept.txt when data.user_fraction < 1
        info = (read_run_file(self.output) or {}) if resume else {}
        here = environment(self.run.device)
        here.update(precision=self.precision, cpu=cpu_name())
        starts = info.get("starts", []) + [here]
        # the learning rates that train something: a report names a run by those alone (full
        # fine-tuning has no lr_peft group, a frozen backbone no lr_backbone group)
        groups = {}
        for g in self.optimizer.param_groups:
            role = groups.setdefault(g["name"], {"lr": g["lr"], "params": 0})
            role["params"] += sum(p.numel() for p in g["params"])
        info.update(format=RUN_FORMAT, format_version=RUN_FORMAT_VERSION, starts=starts,
                    world=dist.world(), fingerprints=self.fingerprints, param_groups=groups)
        write_text_atomic(self.output / RUN_FILE, json.dumps(info, indent=1, default=str))

    def cleanup(self) -> None:
        """Release the run folder (also after an error)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def load_checkpoint(self) -> None:
        found = find_checkpoint(self.output / "checkpoints" / "latest")
        if found is None:
            log.warning("resume: no checkpoint in %s yet; starting from the beginning",
                        self.output / "checkpoints")
            if dist.is_main():  # the records of epochs whose checkpoints are gone start over too
                _keep_records_before(self.output / "metrics.jsonl", 0)
            return
        weights, saved = load_checkpoint(found)
        # a resume continues the same computation: same data, seed, model, frozen weights, source
        check_fingerprints(saved.get("fingerprints"), self.fingerprints, f"checkpoint {found}",
                           ("data", "seed", "model", "peft", "frozen", "source"))
        _check_position(saved, self.steps, found)
        self._check_train_settings()
        load_into(self.model, weights, str(found))
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scheduler is not None and saved.get("scheduler"):
            self.scheduler.load_state_dict(saved["scheduler"])
        _restore_rng(saved["rng"])
        known = {f.name for f in dataclasses.fields(TrainState)}
        trainer = saved["trainer"]
        # a checkpoint written before patience_best existed counts patience from its best score
        self.state = TrainState(**{"patience_best": trainer.get("best", -1.0),
                                   **{k: v for k, v in trainer.items() if k in known}})
        if dist.is_main():
            _keep_records_before(self.output / "metrics.jsonl", self.state.epoch)
        log.info("resumed from %s: epoch %d step %d (global step %d)", found, self.state.epoch,
                 self.state.step, self.state.global_step)

    def _check_train_settings(self) -> None:
        """A resume continues with the train.* settings the run began with. The optimizer's state
        holds the learning rates it began with (loading it sets them back), while config.yaml
        would be rewritten with the new ones: a changed rate, objective or schedule would be
        trained one way and recorded another. ``RESUME_FREE`` keys may change; the
        ``RESUME_FIXED`` keys of other sections may not (another validation score, other inputs)."""
        saved = read_run_config(self.output)
        if saved is None:
            return
        free = RESUME_FREE + (("epochs",) if self.cfg.train.scheduler == "none" else ())
        fixed = RESUME_FIXED + (RESUME_FIXED_AUC if "auc" in (
            self.cfg.eval.metric, dotted_get(saved, "eval.metric")) else ())

        def refused(key: str) -> bool:
            section, name = key.split(".", 1)
            return (name not in free) if section == "train" else key in fixed

        changed = [change_text(key, old, new)
                   for key, old, new in config_changes(saved, self.cfg)
                   if new is not MISSING and refused(key)]
        if changed:
            raise CheckpointError(
                f"{self.output}: cannot resume with other training or scoring settings than the run "
                f"began with ({'; '.join(changed)}): resume with its config.yaml's values, or start "
                "it anew in another output folder")

    def save_checkpoint(self, name: str) -> None:
        """checkpoints/<name>: the trainable weights and everything to continue exactly."""
        t, s = self.cfg.train, self.state
        rngs = dist.all_gather_object(rng_state())  # every rank's generators (dropout differs)
        if dist.is_main():
            # best is for evaluation and init_from, never resumed: its optimizer state (Adam's two
            # moments, twice the trainable weights) is kept only with train.best_optimizer
            keep_optimizer = name != "best" or t.best_optimizer
            save_checkpoint(self.output / "checkpoints" / name, self.model, {
                "optimizer": self.optimizer.state_dict() if keep_optimizer else None,
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "format_version": FORMAT_VERSION, "fingerprints": self.fingerprints,
                "rng": rngs, "trainer": dataclasses.asdict(s), "global_step": s.global_step,
                "sampler": {"seed": t.seed, "epoch": s.epoch, "step": s.step,
                            "steps_per_epoch": self.steps, "batch_size": t.batch_size,
                            "world": dist.world()}})
        dist.barrier()

    # ------------------------------------------------------------------------------------- loop

    def train(self) -> dict:
        """Epochs until ``train.epochs`` or early stopping; returns the final metrics dict."""
        t = self.cfg.train
        stop = self.state.bad_evals >= t.patience
        while self.state.epoch < t.epochs and not stop:
            if self.run.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.run.device)  # a peak per epoch
            record = self._train_epoch()
            eval_seconds = None
            if self.state.epoch % t.eval_every == 0 or self.state.epoch == t.epochs:
                t0 = time.time()
                stop = self._evaluate(record)
                eval_seconds = round(time.time() - t0, 3)
                self._call("on_eval", record)
            self._call("on_epoch_end", record)
            stop = stop or self.should_stop
            if dist.is_main():
                with open(self.output / "metrics.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
            self._record_resources(record, eval_seconds)
            self.save_checkpoint("latest")
        return self._finish()

    def _train_epoch(self) -> dict:
        t, s = self.cfg.train, self.state
        epoch, start = s.epoch, s.step
        self.batches.set_epoch(epoch)
        self.loader_rng.manual_seed(t.seed * 100_003 + epoch)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(self.batches, range(start, self.steps)), batch_size=None,
            shuffle=False, num_workers=t.num_workers, persistent_workers=False,
            pin_memory=self.run.device.type == "cuda", generator=self.loader_rng)
        self.model.train()
        t0 = time.time()
        bar = tqdm(loader, desc=f"epoch {epoch}", total=self.steps - start,
                   disable=not (progress_enabled(t.progress) and dist.is_main()), leave=False)
        positions = 0
        for batch in bar:
            positions += int(batch["global_positions"])
            before = s.epoch_loss
            updated = self._step(_to(batch, self.run.device))
            if updated:
                bar.set_postfix(loss=f"{s.epoch_loss / s.epoch_batches:.4f}")
            self._call("on_step_end", s.epoch_loss - before if updated else None)
            if t.checkpoint_every and s.global_step % t.checkpoint_every == 0 \
                    and s.step < self.steps:  # (the end of the epoch is saved by train)
                self.save_checkpoint("latest")
        s.train_seconds += time.time() - t0
        if start < self.steps and positions == 0:
            raise TrainingError(f"epoch {epoch} trained no position: every user's training part "
                                "is shorter than two items (data.min_seq_len must be at least 4)")
        record = {"epoch": epoch, "global_step": s.global_step,
                  "train_loss": s.epoch_loss / max(s.epoch_batches, 1),
                  "epoch_seconds": round(time.time() - t0, 3)}
        s.epoch, s.step, s.epoch_loss, s.epoch_batches = epoch + 1, 0, 0.0, 0
        return record

    def _step(self, batch: dict) -> bool:
        """One update (or a skipped batch under ``train.nonfinite: skip``); True if updated."""
        t, s, device, amp = self.cfg.train, self.state, self.run.device, self.run.amp
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = self.ddp(batch)
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
            self._nonfinite("loss")
        else:
            torch.where(n_local > 0, loss * (share * dist.world()), zero).backward()
            norm = torch.nn.utils.clip_grad_norm_(
                self.params, t.clip_grad_norm if t.clip_grad_norm > 0 else math.inf)
            updated = bool(torch.isfinite(norm))  # gradients are all-reduced: same everywhere
            if not updated:
                self._nonfinite("gradient")
            else:
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        if updated:
            s.epoch_loss += float(step_loss)
            s.epoch_batches += 1
        s.step += 1
        s.global_step += 1
        return updated

    def _nonfinite(self, what: str) -> None:
        """Skip this batch (``train.nonfinite: skip``: counted, logged), or save the state before
        this update in checkpoints/nonfinite and raise."""
        s = self.state
        where = (f"global step {s.global_step + 1} (epoch {s.epoch}, batch {s.step + 1} of "
                 f"{self.steps})")
        if self.cfg.train.nonfinite == "skip":
            s.skipped += 1
            if dist.is_main():  # every rank takes the same decision
                log.warning("non-finite %s at %s: batch skipped (%d so far)", what, where, s.skipped)
            return
        self.save_checkpoint("nonfinite")
        raise TrainingError(f"non-finite {what} at {where}; the model and optimizer before this "
                            "update are saved in checkpoints/nonfinite. Lower the learning rate, set "
                            "train.clip_grad_norm, or set train.nonfinite: skip to skip such batches")

    def _evaluate(self, record: dict) -> bool:
        """Evaluate after the epoch of ``record`` (updated in place), keep the best checkpoint;
        returns whether early stopping ends the run."""
        s, cfg, epoch = self.state, self.cfg, record["epoch"]
        # with eval.metric auc also the train split's AUC / loss: the generalisation gap per epoch
        splits = ("train", "valid", "test") if cfg.eval.metric == "auc" and cfg.eval.auc_train \
            else ("valid", "test")
        res, ranks = self.run.evaluate(splits, progress=progress_enabled(cfg.train.progress)
                                       and dist.is_main(), return_ranks=True)
        record.update(res)
        key = "AUC" if cfg.eval.metric == "auc" else f"NDCG@{cfg.eval.k}"
        score = res["valid"][key]
        # patience counts from the last reset's score, not from `best`: gains below min_delta
        # would otherwise ratchet the reference up without ever resetting patience (with
        # min_delta 0 the two are the same)
        if score > s.patience_best + cfg.train.min_delta:
            s.patience_best, s.bad_evals = score, 0
        else:
            s.bad_evals += 1
        if score > s.best:  # the best checkpoint is the maximum, whatever min_delta
            s.best, s.best_epoch, s.best_valid, s.best_test = score, epoch, res["valid"], res["test"]
            self.save_checkpoint("best")
            if dist.is_main() and ranks:  # the best epoch's per-user ranks (gathered from every rank)
                save_ranks(self.output / RANKS_FILE, ranks, epoch)
        log.info("epoch %d loss %.4f valid %s test %s", epoch, record["train_loss"],
                 _fmt(res["valid"]), _fmt(res["test"]))
        return s.bad_evals >= cfg.train.patience

    def _record_resources(self, record: dict, eval_seconds: float | None) -> None:
        """resources.json: the epoch's seconds and peak memory (the largest over ranks), after the
        records of earlier epochs (those of a resumed run's lost epochs are dropped)."""
        peaks = dist.all_gather_object(_peak_memory_mb(self.run.device))  # every rank calls
        if not dist.is_main():
            return
        path = self.output / RESOURCES_FILE
        epochs = [e for e in _read_json(path).get("epochs", [])
                  if isinstance(e, dict) and e.get("epoch", math.inf) < record["epoch"]]
        cuda = [p["cuda"] for p in peaks if p["cuda"] is not None]
        epochs.append({"epoch": record["epoch"], "epoch_seconds": record["epoch_seconds"],
                       "eval_seconds": eval_seconds,
                       "peak_rss_mb": max(p["rss"] for p in peaks),
                       "peak_cuda_mb": max(cuda) if cuda else None})
        cuda_all = [e["peak_cuda_mb"] for e in epochs if e.get("peak_cuda_mb") is not None]
        info = {"device": self.run.device.type, "world": dist.world(),
                "peak_rss_mb": max(e["peak_rss_mb"] for e in epochs),
                "peak_rss_scope": self.rss_scope,
                "peak_cuda_mb": max(cuda_all) if cuda_all else None, "epochs": epochs}
        write_text_atomic(path, json.dumps(info, indent=1))

    def _finish(self) -> dict:
        s, summary = self.state, self.run.summary
        final = {"best_epoch": s.best_epoch, "valid": s.best_valid, "test": s.best_test,
                 "trainable_params": summary["trainable"], "total_params": summary["total"],
                 "train_seconds": round(s.train_seconds, 3), "skipped_batches": s.skipped,
                 "global_steps": s.global_step, "peft": summary}
        if summary.get("transfer") is not None:  # train.transfer: what was transferred and frozen
            final["transfer"] = summary["transfer"]
        best = self.output / "checkpoints" / "best" / "model.safetensors"
        if best.is_file():
            final["checkpoint_mb"] = round(best.stat().st_size / 2**20, 3)
        if dist.is_main():
            write_text_atomic(self.output / "metrics.json", json.dumps(final, indent=2))
            if not self.cfg.train.keep_latest:  # a finished run that will not be resumed
                shutil.rmtree(self.output / "checkpoints" / "latest", ignore_errors=True)
        log.info("best epoch %d: valid %s test %s", final["best_epoch"], _fmt(final["valid"]),
                 _fmt(final["test"]))
        self._call("on_train_end", final)
        return final

    def _call(self, hook: str, arg) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, arg)


def train(cfg: Config, output: str | Path, resume: bool = False, data: RecData | None = None,
          content=None, callbacks: list[Callback] | None = None, model=None) -> dict:
    """Train under ``cfg`` into ``output``; returns the final metrics dict.

    ``resume``: continue from ``output``/checkpoints/latest (a run killed at any point continues
    exactly where its last checkpoint left it: on CPU the result is bit-identical to an
    uninterrupted run). Without ``resume`` the folder's previous checkpoints and metrics go.
    """
    trainer = Trainer(cfg, output, data, content, callbacks, model)
    try:
        return trainer.setup(resume).train()
    finally:
        trainer.cleanup()


# --------------------------------------------------------------------------------------- helpers

def is_run_folder(folder: Path) -> bool:
    """Does ``folder`` hold a run (a config.yaml or a run.json written by ``train``)?"""
    return (folder / "config.yaml").is_file() or (folder / RUN_FILE).is_file()


def _fresh_start(output: Path) -> None:
    """A new run in ``output``: what an earlier run left there must not mix in (nor be resumed)."""
    old = [p for p in (output / "checkpoints", output / "metrics.jsonl", output / "metrics.json",
                       output / RANKS_FILE, output / RESOURCES_FILE) if p.exists()]
    if old:
        log.warning("new run in %s: removing the previous run's %s", output,
                    ", ".join(p.name for p in old))
    for p in old:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def save_ranks(path: Path, ranks: dict, epoch: int) -> None:
    """ranks.npz, atomically: {split: float32 per-user ranks}, and the epoch they are of."""
    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, epoch=np.int64(epoch),
                     **{split: np.asarray(r, dtype=np.float32) for split, r in ranks.items()})
    atomic_write(path, write)


def _reset_peak_rss() -> str:
    """Reset this process's peak resident memory (Linux: "5" to /proc/self/clear_refs resets
    VmHWM): "run" when done, so the peaks read later are this run's; "process" where it cannot
    be (another OS), so they are the process's since it began, earlier runs in it included."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return "run" if _vm_hwm_mb() is not None else "process"
    except OSError:
        return "process"


def _vm_hwm_mb() -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _peak_memory_mb(device) -> dict:
    """This process's peak resident memory since the run began (VmHWM, reset by
    ``_reset_peak_rss``; elsewhere ru_maxrss, the process's whole life) and, on CUDA, the peak
    allocated by torch since the epoch began, in MiB."""
    rss = _vm_hwm_mb()
    if rss is None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
    cuda = (torch.cuda.max_memory_allocated(device) / 2**20
            if getattr(device, "type", None) == "cuda" else None)
    return {"rss": round(rss, 1), "cuda": None if cuda is None else round(cuda, 1)}


def _read_json(path: Path) -> dict:
    try:
        got = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or cut by a kill
        return {}
    return got if isinstance(got, dict) else {}


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
    """Every rank gets back its own generators (a list, one per rank, as ``save_checkpoint``)."""
    states = saved if isinstance(saved, list) else [saved]
    if len(states) != dist.world():
        log.warning("resume: the checkpoint holds the RNG states of %d process(es), this run has "
                    "%d: dropout will not replay exactly", len(states), dist.world())
    set_rng_state(states[dist.rank() % len(states)])


def _to(batch: dict, device) -> dict:
    out = {}
    for k, v in batch.items():
        out[k] = _to(v, device) if isinstance(v, dict) else v.to(device, non_blocking=True)
    return out


def _fmt(m: dict) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in m.items())

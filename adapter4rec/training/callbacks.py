"""Callbacks: hooks into the trainer's loop for custom logging and stopping (as transformers'
``TrainerCallback``). Subclass ``Callback`` and override what you need; every hook gets the trainer
(``trainer.state``, ``trainer.model``, ``trainer.run``, ``trainer.output``) and may set
``trainer.should_stop = True`` to end the run after the current epoch.

    class StopAtHR(Callback):
        def on_eval(self, trainer, record):
            if record["valid"]["HR@10"] > 0.3:
                trainer.should_stop = True

    train(cfg, "runs/x", callbacks=[StopAtHR()])
"""
from __future__ import annotations

from pathlib import Path


class Callback:
    def on_step_end(self, trainer, loss: float | None) -> None:
        """After each batch: ``loss`` is the global batch's mean loss, None for a skipped batch."""

    def on_eval(self, trainer, record: dict) -> None:
        """After each evaluation: ``record`` has ``epoch``, ``train_loss``, ``valid``, ``test``."""

    def on_epoch_end(self, trainer, record: dict) -> None:
        """After each epoch (its metrics.jsonl line, evaluated or not), before its checkpoint."""

    def on_train_end(self, trainer, final: dict) -> None:
        """After metrics.json is written."""


class TensorBoard(Callback):
    """Step loss and learning rate (each parameter group), per-epoch loss and the valid / test
    metrics, in ``<run>/tensorboard`` (``train.tensorboard: true``; needs the ``tensorboard``
    package: ``pip install 'adapter4rec[tensorboard]'``)."""

    def __init__(self, folder: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder))

    def on_step_end(self, trainer, loss):
        step = trainer.state.global_step
        if loss is not None:
            self.writer.add_scalar("train/step_loss", loss, step)
        for g in trainer.optimizer.param_groups:
            self.writer.add_scalar(f"lr/{g.get('name', 'group')}", g["lr"], step)

    def on_eval(self, trainer, record):
        for split in ("valid", "test"):
            for m, v in record[split].items():
                self.writer.add_scalar(f"{split}/{m}", v, record["epoch"])

    def on_epoch_end(self, trainer, record):
        self.writer.add_scalar("train/loss", record["train_loss"], record["epoch"])
        self.writer.flush()

    def on_train_end(self, trainer, final):
        self.writer.close()

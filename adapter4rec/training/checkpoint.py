"""Checkpoints: weights as safetensors (trainable parts only where the backbone is frozen), trainer
state (optimizer, scheduler, RNG states of every rank, epoch/step, counters) as a
tensors-and-primitives file loaded with ``weights_only=True`` (no pickled classes). Every file is
written atomically (``runtime.io``) and a checkpoint folder is replaced as a whole
(``save_checkpoint``), so a kill mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..runtime.io import (UMASK, WEIGHTS, atomic_write, fsync_dir, is_temporary, load_weights,
                          old_copy, save_weights, trainable_state, weights_metadata)

STATE = "trainer_state.pt"
# of trainer_state.pt (its "format_version"; CHANGELOG.md lists every change). 2: optimiser groups
# split by weight decay (training.optim), fingerprints of the run's inputs; 1 (none written): 0.1.0
FORMAT_VERSION = 2


def save_checkpoint(folder: str | Path, model, trainer_state: dict) -> None:
    """``folder``/model.safetensors + trainer_state.pt, replaced as a whole.

    Both files are written (atomically, fsynced) into a fresh sibling folder, which then takes the
    place of ``folder``: the old folder is first renamed to ``.old-<name>``, the new one renamed
    in, the old one deleted. A kill at any moment leaves either ``folder`` or ``.old-<name>``
    complete, and ``find_checkpoint`` picks the right one. The weights carry the global step in
    their safetensors metadata, so a folder whose two files disagree is detected on load.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    step = str(trainer_state["global_step"])
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".new-{folder.name}."))
    os.chmod(tmp, 0o777 & ~UMASK)
    try:
        save_weights(trainable_state(model), tmp / WEIGHTS, metadata={"global_step": step})
        atomic_write(tmp / STATE, lambda t: torch.save(trainer_state, t))
        old = old_copy(folder)
        if folder.exists():  # complete (only ever made by the rename below)
            if old.exists():  # left by a save cut short after its rename: outdated
                shutil.rmtree(old)
            os.rename(folder, old)
        os.rename(tmp, folder)
        fsync_dir(folder.parent)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


_ATOMIC_NAMES = ("metrics.json", "metrics.jsonl", WEIGHTS, STATE)  # what a run writes atomically


def remove_partial_writes(folder: str | Path) -> None:
    """Delete what writes cut short by a kill left in ``folder`` (``.new-*`` checkpoint folders,
    ``.<name>.*`` temporary files); the files they were replacing are intact."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.is_dir() and p.name.startswith(".new-"):
            shutil.rmtree(p, ignore_errors=True)
        elif p.is_file() and is_temporary(p.name, _ATOMIC_NAMES):
            p.unlink(missing_ok=True)


def find_checkpoint(folder: str | Path) -> Path | None:
    """The complete checkpoint folder for ``folder``: itself, or the copy a save that was cut
    short left as ``.old-<name>``; None when there is neither."""
    folder = Path(folder)
    for cand in (folder, old_copy(folder)):
        if (cand / STATE).is_file() and (cand / WEIGHTS).is_file():
            return cand
    return None


def load_checkpoint(folder: str | Path) -> tuple[dict, dict]:
    """(weights, trainer state) of a checkpoint folder written by ``save_checkpoint``.

    Raises CheckpointError when no complete checkpoint is there, when a file cannot be read, or when
    the weights and the state belong to different steps.
    """
    folder = Path(folder)
    found = find_checkpoint(folder)
    if found is None:
        raise CheckpointError(f"{folder} holds no complete checkpoint ({WEIGHTS} and {STATE} needed)")
    try:
        state = torch.load(found / STATE, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{found / STATE} cannot be read ({type(e).__name__}: {e})") from None
    version = int(state.get("format_version", 1)) if isinstance(state, dict) else 0
    if version > FORMAT_VERSION or not isinstance(state, dict):
        raise CheckpointError(f"{found / STATE}: a checkpoint of format version {version}; this "
                              f"version of adapter4rec reads up to {FORMAT_VERSION}: upgrade "
                              "adapter4rec (see CHANGELOG.md), or start a new run")
    if version < FORMAT_VERSION:
        raise CheckpointError(f"{found / STATE}: a checkpoint of format version {version} (adapter4rec "
                              "0.1): its optimizer state has another layout (weight decay now skips "
                              "biases, norm gains and embeddings), so it cannot be resumed; start a "
                              "new run (its weights still serve train.init_from and evaluate)")
    step = weights_metadata(found / WEIGHTS).get("global_step")
    if step is None or step != str(state.get("global_step")):
        raise CheckpointError(
            f"{found}: the weights (global step {step}) and the trainer state (global step "
            f"{state.get('global_step')}) do not belong together; the checkpoint was not written by "
            "this version or was altered. Start the run again (--overwrite) or restore the folder")
    return load_weights(found / WEIGHTS), state

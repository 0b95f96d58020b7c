"""Checkpoints: weights as safetensors (trainable parts only where the backbone is frozen), trainer
state (optimizer, scheduler, RNG states of every rank, epoch/step, counters) as a
tensors-and-primitives file loaded with ``weights_only=True`` (no pickled classes). Every file is
written atomically (a temporary file, fsync, rename) and a checkpoint folder is replaced as a whole
(``save_checkpoint``), so a kill mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError

WEIGHTS = "model.safetensors"
STATE = "trainer_state.pt"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # mkstemp/mkdtemp make private (0600/0700) entries; give them the usual modes


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.fchmod(fd, 0o666 & ~_UMASK)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dfd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_text_atomic(path: str | Path, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    _atomic(Path(path), write)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that training changes (all of them for full fine-tuning)."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_weights(state: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    _atomic(Path(path), lambda tmp: save_file(state, tmp, metadata=metadata))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    p = Path(path)
    if p.is_dir() or not p.exists():  # a checkpoint folder (or its copy from a save cut short)
        p = next((c / WEIGHTS for c in (p, _old(p)) if (c / WEIGHTS).is_file()), p / WEIGHTS)
    if not p.is_file():
        raise CheckpointError(f"no weights file at {p}")
    try:
        return load_file(p)
    except Exception as e:  # truncated or not a safetensors file
        raise CheckpointError(f"{p} is not a readable safetensors file ({e})") from None


def rng_state() -> dict:
    s = {"torch": torch.get_rng_state(), "numpy": _np_state(), "python": _py_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def _np_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
            "cached": cached}


def _py_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    version, internal, gauss = s["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


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
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        save_weights(trainable_state(model), tmp / WEIGHTS, metadata={"global_step": step})
        _atomic(tmp / STATE, lambda t: torch.save(trainer_state, t))
        old = _old(folder)
        if folder.exists():  # complete (only ever made by the rename below)
            if old.exists():  # left by a save cut short after its rename: outdated
                shutil.rmtree(old)
            os.rename(folder, old)
        os.rename(tmp, folder)
        _fsync_dir(folder.parent)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _old(folder: Path) -> Path:
    return folder.parent / f".old-{folder.name}"


def _fsync_dir(path: Path) -> None:
    dfd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def remove_partial_writes(folder: str | Path) -> None:
    """Delete what writes cut short by a kill left in ``folder`` (``.new-*`` checkpoint folders,
    ``.<name>.*`` temporary files); the files they were replacing are intact."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.is_dir() and p.name.startswith(".new-"):
            shutil.rmtree(p, ignore_errors=True)
        elif p.is_file() and any(p.name.startswith(f".{n}.") for n in _ATOMIC_NAMES):
            p.unlink(missing_ok=True)


_ATOMIC_NAMES = ("metrics.json", "metrics.jsonl", WEIGHTS, STATE)  # what _atomic writes in a run


def find_checkpoint(folder: str | Path) -> Path | None:
    """The complete checkpoint folder for ``folder``: itself, or the copy a save that was cut
    short left as ``.old-<name>``; None when there is neither."""
    folder = Path(folder)
    for cand in (folder, _old(folder)):
        if (cand / STATE).is_file() and (cand / WEIGHTS).is_file():
            return cand
    return None


def _step_of(weights_file: Path) -> str | None:
    try:
        with safe_open(weights_file, framework="pt") as f:
            return (f.metadata() or {}).get("global_step")
    except Exception as e:  # safetensors raises its own types for a truncated/corrupt header
        raise CheckpointError(f"{weights_file} is not a readable safetensors file ({e})") from None


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
    step = _step_of(found / WEIGHTS)
    if step is None or step != str(state.get("global_step")):
        raise CheckpointError(
            f"{found}: the weights (global step {step}) and the trainer state (global step "
            f"{state.get('global_step')}) do not belong together; the checkpoint was not written by "
            "this version or was altered. Start the run again (--overwrite) or restore the folder")
    return load_weights(found / WEIGHTS), state


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
              skip_prefixes: tuple[str, ...] = (), allow_missing: bool = True) -> list[str]:
    """Copy ``state`` into ``model``; a key the model lacks or a shape that differs is an error that
    lists the keys. Returns the model keys left as they were (e.g. a frozen backbone)."""
    own = dict(model.named_parameters())
    own.update(dict(model.named_buffers()))
    state = {k: v for k, v in state.items() if not k.startswith(skip_prefixes)}
    unexpected = sorted(k for k in state if k not in own)
    wrong = sorted(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                   for k, v in state.items() if k in own and own[k].shape != v.shape)
    if unexpected or wrong:
        lines = [f"checkpoint {source} does not fit this model:"]
        if unexpected:
            lines.append(f"  keys the model does not have ({len(unexpected)}): " + ", ".join(unexpected[:20]))
        if wrong:
            lines.append(f"  shape mismatches ({len(wrong)}): " + "; ".join(wrong[:20]))
        raise CheckpointError("\n".join(lines))
    missing = sorted(k for k in own if k not in state and not k.startswith(skip_prefixes))
    if missing and not allow_missing:
        raise CheckpointError(f"checkpoint {source} lacks {len(missing)} keys: {', '.join(missing[:20])}")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)
    return missing

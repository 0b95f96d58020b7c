"""Every atomic write and every safetensors weight file of the library: one implementation.

A write goes to a temporary file beside its target (``.<name>.<random>``), is fsynced, renamed over
the target and the rename made durable: a kill at any moment leaves either the old file or the new
one, never a half-written one. Checkpoints, the hidden-state cache, adapter files, ``metrics.json``
and ``config.yaml`` all write through here.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, StorageError

WEIGHTS = "model.safetensors"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()  # mkstemp/mkdtemp make private (0600/0700) entries; give them the usual modes


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside ``path`` durable."""
    dfd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` to fill a temporary file, then put it in place of ``path``.

    A failure of the file system (disk full, read-only folder, ...) is a ``StorageError`` naming
    ``path``; the file it was to replace is left as it was."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.fchmod(fd, 0o666 & ~UMASK)
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        raise StorageError(f"{path}: cannot write it ({e.strerror or e}); the previous file, if "
                           "any, is unchanged") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    atomic_write(path, write)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def is_temporary(name: str, targets) -> bool:
    """Is ``name`` a temporary file ``atomic_write`` made for one of the file names ``targets``?"""
    return any(name.startswith(f".{t}.") for t in targets)


class FolderLock:
    """An exclusive lock on a folder (``fcntl.flock`` on ``<folder>/.lock``, which holds the pid),
    so two processes never write one run folder at once. POSIX only; released on ``release`` (which
    removes the file) or when the process ends, however it ends (the file then stays, unlocked)."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / ".lock"
        self.fd = None

    def acquire(self) -> "FolderLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~UMASK)
        except OSError as e:
            raise StorageError(f"{self.path}: cannot create the lock file ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StorageError(f"{self.path.parent} is in use by another run (pid {holder}); wait "
                               "for it to end, or choose another folder") from None
        try:  # the holder may have removed the file between our open and our lock: lock anew
            same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return self.acquire()
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # a finished run leaves no lock file behind
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


# ------------------------------------------------------------------------------------------ weights

def tensors_digest(named: dict[str, torch.Tensor]) -> str:
    """A short stable hash (blake2b, 16 bytes) of named tensors: names, dtypes, shapes, values."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(named):
        t = named[name].detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: hash its 16-bit words
            t = t.view(torch.int16)
        h.update(f"{name}\0{t.dtype}{tuple(t.shape)}\0".encode())
        h.update(t.numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that training changes (all of them for full fine-tuning)."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_weights(state: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def old_copy(folder: Path) -> Path:
    """Where a checkpoint save that was cut short leaves the previous folder."""
    return folder.parent / f".old-{folder.name}"


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file, or the weights file of a checkpoint folder (or of the copy a save that
    was cut short left beside it)."""
    p = Path(path)
    if p.is_dir() or not p.exists():
        p = next((c / WEIGHTS for c in (p, old_copy(p)) if (c / WEIGHTS).is_file()), p / WEIGHTS)
    if not p.is_file():
        raise CheckpointError(f"no weights file at {p}")
    try:
        return load_file(p)
    except Exception as e:  # truncated or not a safetensors file
        raise CheckpointError(f"{p} is not a readable safetensors file ({e})") from None


def weights_metadata(path: str | Path) -> dict:
    """The string metadata of a safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:  # safetensors raises its own types for a truncated/corrupt header
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None


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

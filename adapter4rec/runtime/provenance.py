"""What produced a run: the library, its git commit, the command line, the versions, the device."""
from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the library's checkout (``+dirty`` with uncommitted changes); None for an
    installed package or without git."""
    root = Path(path or Path(__file__).resolve().parents[2])
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device=None) -> dict:
    """The facts a reader of a result needs to reproduce it."""
    import torch
    import transformers

    from .. import __version__

    return {"adapter4rec": __version__, "git_commit": git_commit(), "argv": list(sys.argv),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "device": str(device) if device else None,
            "cuda": torch.cuda.get_device_name(device) if device is not None and
            getattr(device, "type", "") == "cuda" else None,
            "host": platform.node(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}

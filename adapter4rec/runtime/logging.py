"""The library's logger ("adapter4rec"): to stderr, and to a run folder's ``train.log``."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from . import distributed as dist

log = logging.getLogger("adapter4rec")


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (pytest and notebooks replace it; a handler bound
    to an old one would write to a closed file)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(output: str | Path | None = None) -> None:
    """INFO to stderr (rank 0; other ranks warnings only), and to ``output``/train.log if given."""
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
        fh = logging.FileHandler(Path(output) / "train.log", encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(fh)
    if not dist.is_main():
        log.setLevel(logging.WARNING)


def progress_enabled(wanted: bool) -> bool:
    """Progress bars only where a person watches: a terminal or a notebook, never a redirected
    stderr (a log file would fill with carriage-return redraws)."""
    if not wanted:
        return False
    if "ipykernel" in sys.modules:
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())

"""The exceptions the CLI turns into one line and an exit status (cli.main).

UserError: bad input (a path, a file, an option), exit 2; DiskFull: a UserError for a write
that found no space (the file, the free space of its folder and what was kept), exit 2;
Stopped: SIGTERM or SIGINT ended a training run after saving a checkpoint, exit 128 +
signal; Unhealthy: the health checks stopped a run that diverged (train.py turns it into a
UserError naming the checkpoint).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .health import HealthEvent


class UserError(Exception):
    """Bad input from the user (a path, a file, an option): the message names it."""


# a write that found no room: the disk is full, the file would pass the file size limit
# (`ulimit -f`, RLIMIT_FSIZE) or the user's quota
FULL_ERRNOS = frozenset(code for code in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", None)) if code)
# safetensors (Rust) reports an I/O error only in its message: "... File too large (os error 27)"
_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def full_errno(e: BaseException) -> int | None:
    """The errno (ENOSPC, EFBIG, EDQUOT) if `e`, or an exception it was raised from or while
    handling, says a write found no room; else None. torch.save into a Python file raises a
    RuntimeError whose context is the file's OSError; safetensors names the errno in text."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        code = e.errno if isinstance(e, OSError) else None
        if code is None and type(e).__name__ == "SafetensorError":
            found = _OS_ERROR.search(str(e))
            code = int(found.group(1)) if found else None
        if code in FULL_ERRNOS:
            return code
        e = e.__cause__ or e.__context__
    return None


def free_bytes(path: str | Path) -> int | None:
    """shutil.disk_usage(...).free of the folder `path` is in (its nearest existing one)."""
    folder = Path(path).absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _size(n: float | None) -> str:
    if n is None:
        return "unknown space"
    if n < 1000:
        return f"{int(n)} bytes"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            break
    return f"{n:.1f} {unit}"


class DiskFull(UserError):
    """A write of `path` found no room (`code`: ENOSPC, EFBIG or EDQUOT). The message names
    the file, the error, the free space of its folder (shutil.disk_usage) and `kept`: what
    stays as it was (the previous checkpoint, the rows written so far)."""

    def __init__(self, path: str | Path, code: int, kept: str = "") -> None:
        self.path, self.code, self.free = Path(path), code, free_bytes(path)
        why = os.strerror(code) + (" (over the file size limit, ulimit -f)" if code == errno.EFBIG else "")
        self.kept = kept
        super().__init__(
            f"{path}: not written: {why}; {_size(self.free)} free in {self.path.absolute().parent}"
            + (f"; {kept}" if kept else "")
        )

    def keeping(self, kept: str) -> DiskFull:
        """The same error, saying `kept` instead (a caller knows more of what was kept)."""
        return DiskFull(self.path, self.code, kept)


class Stopped(Exception):
    """SIGTERM or SIGINT arrived: a checkpoint was saved and the run ended cleanly."""

    def __init__(self, signum: int, checkpoint: Path) -> None:
        self.signum, self.checkpoint = signum, checkpoint
        super().__init__(
            f"stopped by {signal.Signals(signum).name}; checkpoint {checkpoint} (continue with --resume {checkpoint})"
        )


class Unhealthy(RuntimeError):
    """The health monitor stopped the run (it diverged); `event` (a health.HealthEvent)
    says how and where."""

    def __init__(self, event: HealthEvent) -> None:
        self.event = event
        super().__init__(event.message)

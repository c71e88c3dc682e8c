"""TensorBoard scalars and conv1 filters per epoch, when tensorboard is installed; and
normalise_kernels, how conv1's kernels are shown (here and in figures.py's Figure 3).

Without the tensorboard package this does nothing (metrics.csv has the same numbers). A
write that fails (a full disk) stops the event files with a one-line warning, and the run
goes on: nothing is appended after a record cut short, which would hide every later one
from TensorBoard's reader.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torchvision.utils import make_grid

if TYPE_CHECKING:
    from collections.abc import Callable


def normalise_kernels(w: torch.Tensor) -> torch.Tensor:
    """Each kernel (in_channels x k x k) scaled to [0, 1] by its own min and max, over all
    its channels together (so an RGB kernel keeps its colour balance); a constant kernel
    becomes 0.5."""
    w = w.detach().float().cpu()
    flat = w.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    span = (hi - lo).clamp_min(torch.finfo(torch.float32).tiny)
    out = (flat - lo[:, None]) / span[:, None]
    out[(hi - lo) == 0] = 0.5
    return out.view_as(w)


def conv1_grid(model: nn.Module) -> torch.Tensor:
    """conv1's kernels as one image (C, H, W) in [0, 1], each kernel scaled to its own range."""
    w = normalise_kernels(next(m for m in model.modules() if isinstance(m, nn.Conv2d)).weight)
    if w.shape[1] not in (1, 3):  # neither gray nor RGB: show the mean over inputs
        w = w.mean(1, keepdim=True)
    return make_grid(w, nrow=max(1, int(w.shape[0] ** 0.5)), padding=1, pad_value=1.0)


def _quiet_writer_thread() -> None:
    """tensorboard's writer thread re-raises a failed write, whose traceback the thread
    machinery prints; the next call here raises it again, and that becomes the one warning
    line. So the thread's copy of an OSError is dropped (every other error is printed)."""
    previous = threading.excepthook
    if getattr(previous, "alexnet_tensorboard", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread"):
            previous(args)

    hook.alexnet_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook


class TensorBoard:
    def __init__(self, out: Path, enabled: bool = True, log: Callable[[str], None] = print) -> None:
        self.writer, self.log, self.folder = None, log, Path(out) / "tensorboard"
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed
            return
        _quiet_writer_thread()
        try:
            self.writer = SummaryWriter(log_dir=str(self.folder))
        except OSError as e:
            self._stopped(e)

    def epoch(self, row: dict, model: nn.Module) -> None:
        if self.writer is None:
            return
        step = row["epoch"]
        try:
            for name, value in row.items():  # metrics.csv's row: every number but the position
                if name not in ("epoch", "step") and isinstance(value, (int, float)):  # val_*: if validated
                    self.writer.add_scalar(name.replace("_", "/", 1), value, step)
            self.writer.add_image("conv1_filters", conv1_grid(model), step)
            self.writer.flush()
        except OSError as e:
            self._stopped(e)

    def _stopped(self, e: OSError) -> None:
        self.log(f"alexnet: warning: {self.folder}: not written any more ({e.strerror or e}); metrics.csv goes on")
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(OSError):  # the error was reported when it happened
                self.writer.close()
            self.writer = None

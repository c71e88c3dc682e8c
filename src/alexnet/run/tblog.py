"""TensorBoard scalars and conv1 filters per epoch, when tensorboard is installed; and
normalise_kernels, how conv1's kernels are shown (here and in figures.py's Figure 3).

Without the tensorboard package this does nothing (metrics.csv has the same numbers).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.utils import make_grid


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


class TensorBoard:
    def __init__(self, out: Path, enabled: bool = True) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed
            return
        self.writer = SummaryWriter(log_dir=str(Path(out) / "tensorboard"))

    def epoch(self, row: dict, model: nn.Module) -> None:
        if self.writer is None:
            return
        step = row["epoch"]
        for name, value in row.items():  # metrics.csv's row: every number but the position
            if name not in ("epoch", "step") and isinstance(value, (int, float)):  # val_*: if validated
                self.writer.add_scalar(name.replace("_", "/", 1), value, step)
        self.writer.add_image("conv1_filters", conv1_grid(model), step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

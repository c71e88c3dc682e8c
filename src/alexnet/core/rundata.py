"""What a training run reads (the data stage of train.py): both splits (this process's
share), their classes and the names to show, the mean image (§2), and the training files
that could not be read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import RunConfig
from ..data.datasets import is_fashion_mnist, load_split
from ..data.imagenet import human_names
from ..data.loaders import Split
from ..data.stats import cached_mean_image
from ..run.distributed import Dist
from ..run.errors import UserError

MIN_STEPS = 4  # steps an epoch that the batch suggested for a small folder gives at least


@dataclass
class RunData:
    """What a run reads: its splits, the class names to show, the mean image (§2), and the
    training files a statistics pass could not read."""

    train: Split
    val: Split
    classes: list[str]
    class_names: list[str] | None  # human-readable (ImageNet synsets); None: the class names
    mean_image: torch.Tensor | None
    unreadable: list[str]

    def all_unreadable(self) -> list[str]:
        return self.unreadable + [f for f in self.train.loader.unreadable if f not in self.unreadable]


def load_data(
    cfg: RunConfig,
    ckpt: dict | None,
    d: Dist,
    log: Callable[..., None],
    device: torch.device,
    source: dict | None = None,
) -> RunData:
    """The data stage: both splits (this process's share), their classes, and the mean image
    (a fine-tune's comes from its checkpoint, `source`)."""
    t, data = cfg.train, cfg.data
    train_split = load_split(True, data, t.batch_size, t.seed, d=d)
    val_split = load_split(False, data, t.batch_size, t.seed, d=d)
    if len(train_split.loader) == 0:  # an epoch drops its last partial batch: nothing to train on
        raise UserError(_too_few(data.name, train_split.size, t.batch_size, d.world))
    classes = train_split.classes
    if classes != val_split.classes:
        raise UserError(f"{data.name}: the training and validation classes differ")
    if ckpt is not None and list(ckpt["classes"]) != classes:
        raise UserError(f"{t.resume}: trained on other classes than {data.name}")
    names = None if is_fashion_mnist(data) else human_names(classes, Path(data.name), data.synsets)
    image, unreadable = mean_image(cfg, ckpt or source, d, log, device)
    return RunData(train_split, val_split, classes, names, image, unreadable)


def _too_few(name: str, images: int, batch: int, world: int) -> str:
    """Why a training split smaller than one batch cannot train, and a batch that can: the
    largest power of two that gives at least MIN_STEPS steps an epoch (and splits evenly
    over the processes)."""
    fits = max(images // MIN_STEPS, 1)
    suggest = max(2 ** (fits.bit_length() - 1), world)
    return (
        f"{name}: {images} training images make no full batch of --batch-size {batch} (an epoch drops its last "
        f"partial batch): try --batch-size {suggest} ({images // suggest} steps an epoch)"
    )


def mean_image(
    cfg: RunConfig, ckpt: dict | None, d: Dist, log: Callable[..., None], device: torch.device
) -> tuple[torch.Tensor | None, list[str]]:
    """The training set's mean image (§2) if the recipe uses one: from the checkpoint, the
    cache, or one pass over the data, every process reading its share (stats.py); and the
    unreadable files this process's share skipped."""
    if not cfg.data.mean_image:
        return None, []
    if ckpt is not None and ckpt.get("mean_image") is not None:
        return ckpt["mean_image"], []
    t = cfg.train
    stats_split = load_split(True, cfg.data, t.batch_size, ordered=True, d=d)
    image = cached_mean_image(cfg.data, stats_split, Path(t.out), log=log, device=device, d=d)
    return image, list(stats_split.loader.unreadable)

"""`alexnet evaluate`: top-1/top-5 accuracy and error of a checkpoint on a validation set."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..core.checkpoint import load_inference
from ..core.engine import evaluate_loader
from ..data.datasets import is_fashion_mnist, load_split
from ..data.imagenet import human_names
from ..run import distributed
from ..run.errors import UserError
from ..run.runtime import check_precision, resolve_device


def evaluate_checkpoint(
    path: str,
    data: str | None = None,
    data_dir: str | None = None,
    batch_size: int = 256,
    device: str = "auto",
    amp: str | None = None,
    limit: int | None = None,
    ten_crop: bool = False,
    mirror: bool | None = None,
) -> dict | None:
    """Metrics of a checkpoint; under torchrun each process evaluates its share of the
    images and the main process returns the totals (the others return None)."""
    d, device = distributed.init(device)
    try:
        return _evaluate(path, data, data_dir, batch_size, resolve_device(device), amp, limit, ten_crop, mirror, d)
    finally:
        distributed.shutdown()


def _evaluate(
    path: str,
    data: str | None,
    data_dir: str | None,
    batch_size: int,
    dev: torch.device,
    amp: str | None,
    limit: int | None,
    ten_crop: bool,
    mirror: bool | None,
    d: distributed.Dist,
) -> dict | None:
    if amp is not None:
        check_precision(amp, dev)
    loaded = load_inference(path, dev, amp)
    overrides = {k: v for k, v in {"name": data, "data_dir": data_dir}.items() if v is not None}
    # --limit, not the run's --limit-val: None is every image
    data_cfg = dataclasses.replace(loaded.config.data, limit_val=limit, **overrides)
    # --batch-size is the global batch, as in train, rounded down to split evenly over the
    # processes (evaluation's numbers do not depend on the batch)
    split = load_split(False, data_cfg, max(d.world, batch_size - batch_size % d.world), d=d)
    if dev.type == "cuda":
        split.loader.pin()
    names = None if is_fashion_mnist(data_cfg) else human_names(split.classes, Path(data_cfg.name), data_cfg.synsets)
    if loaded.classes not in (split.classes, names):  # imported weights know names, not wnids
        raise UserError(f"{data_cfg.name}: its classes are not the {len(loaded.classes)} classes {path} was trained on")
    mirror = loaded.config.train.eval_mirror if mirror is None else mirror  # as the run validated
    result = evaluate_loader(loaded, split.loader, ten_crop, mirror and not ten_crop, d=d, show=d.main)
    if not d.main:
        return None
    info = {
        "checkpoint": str(path),
        "data": data_cfg.name,
        "precision": loaded.precision,
        "lrn": loaded.lrn,
        "processes": d.world,
    }
    return {**info, **result.to_dict()}

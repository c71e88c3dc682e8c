"""`alexnet evaluate`: top-1/top-5 accuracy and error of a checkpoint on a validation set."""

from __future__ import annotations

import dataclasses

import torch

from .augment import Preprocess
from .checkpoint import load_model
from .data import load_split
from .engine import evaluate, resolve_device
from .errors import UserError


def evaluate_checkpoint(path: str, data: str | None = None, data_dir: str | None = None,
                        batch_size: int = 256, device: str = "auto", amp: str | None = None,
                        limit: int | None = None) -> dict:
    dev = resolve_device(device)
    model, cfg, classes = load_model(path, dev)
    data_cfg = cfg.data
    if data is not None:
        data_cfg = dataclasses.replace(data_cfg, name=data)
    if data_dir is not None:
        data_cfg = dataclasses.replace(data_cfg, data_dir=data_dir)
    m = cfg.model
    split = load_split(False, data_cfg, m.input_size, m.in_channels, batch_size, limit=limit)
    if split.classes != classes:
        raise UserError(f"{data_cfg.name}: its classes are not the {len(classes)} classes {path} was trained on")
    channels_last = cfg.train.channels_last
    model = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    preprocess = Preprocess(data_cfg.mean, data_cfg.std, m.input_size, dev, channels_last)
    amp = cfg.train.amp if amp is None else amp
    result = evaluate(model, split.loader, preprocess, dev, amp)
    return {"checkpoint": str(path), "data": data_cfg.name, "precision": amp, **result}

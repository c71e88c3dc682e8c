"""Fine-tuning (`alexnet train --init-from CKPT [--freeze ...]`): the network, weights and
preprocessing a run takes from a trained checkpoint, and the layers it keeps as they are.
The default recipe for it is `finetune` (recipes.py); docs/FIDELITY.md, "Fine-tuning"."""

from __future__ import annotations

import dataclasses

import torch

from ..config import RunConfig, TrainConfig
from ..run.errors import UserError
from .model import AlexNet


def source_config(cfg: RunConfig, source: dict) -> RunConfig:
    """Fine-tuning: the network and the preprocessing of --init-from's checkpoint (its input
    size, mean image or mean, std and stored size), the data and training of this run."""
    src, path = RunConfig.from_dict(source["config"]), cfg.train.init_from
    if src.model.in_channels != cfg.data.channels:
        raise UserError(
            f"{path}: a network for {src.model.in_channels}-channel images cannot fine-tune on "
            f"{cfg.data.channels}-channel data {cfg.data.name}"
        )
    mean_image = src.data.mean_image and source.get("mean_image") is not None
    data = dataclasses.replace(
        cfg.data, resize=src.data.resize, mean=src.data.mean, std=src.data.std, mean_image=mean_image
    )
    return dataclasses.replace(cfg, model=src.model, data=data)


def init_from(model: AlexNet, source: dict, t: TrainConfig, classes: list[str]) -> str:
    """Load --init-from's weights: all of them onto the same classes, all but the last
    layer (which keeps its fresh init) onto others. Returns the line that says which."""
    last = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    same = list(source["classes"]) == classes
    weights = {k: v for k, v in source["model"].items() if same or not k.startswith(last + ".")}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:
        raise UserError(f"{t.init_from}: weights do not fit the network it describes ({e})") from e
    if unexpected or any(not k.startswith(last + ".") for k in missing):
        raise UserError(f"{t.init_from}: weights do not fit the network it describes ({(unexpected or missing)[0]})")
    if same:
        return f"alexnet: fine-tuning every layer of {t.init_from} (the same {len(classes)} classes)"
    return (
        f"alexnet: fine-tuning {t.init_from}: its layers but the last, which is new for "
        f"{len(classes)} classes (it had {len(source['classes'])})"
    )


def freeze(model: AlexNet, upto: str) -> None:
    """--freeze: the weights up to `upto` (features, fc6 or fc7) take no gradient."""
    linears = [m for m in model.classifier if isinstance(m, torch.nn.Linear)]
    frozen = [model.features] + linears[: {"features": 0, "fc6": 1, "fc7": 2}[upto]]
    for module in frozen:
        module.requires_grad_(False)

"""`alexnet features CKPT DATA --layer fc7 --out FILE.safetensors`: a layer's activations for
every image of a folder (DeCAF's use of AlexNet: fc7 codes for a linear classifier).

DATA is an image folder, DATA/<class>/* or ImageNet-style (DATA/train/<class>/*: --split
picks train or val). FILE holds `features` (N x D float32: the layer's output, flattened) and `labels` (N
int64, the folder's class indices), and in its metadata the image paths, the class names,
the layer and the checkpoint (JSON strings: safetensors metadata is text). Images go through
the checkpoint's evaluation path (§2: the central patch, its mean and std), a batch at a
time, decoded by DataLoader worker processes; an unreadable file is skipped and named, as
training does.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from ..core.checkpoint import Inference, load_inference
from ..data.loaders import default_workers
from ..data.pack import stored_image
from ..data.sources import SourceSplit, class_folder
from ..run.errors import UserError
from ..run.jsonio import atomic_write
from ..run.runtime import resolve_device
from .inspection import stages


class _Images(torch.utils.data.Dataset):
    """(uint8 image, index, None), or (None, index, reason) for a file that cannot be read."""

    def __init__(self, split: SourceSplit, channels: int, resize: int) -> None:
        self.split, self.channels, self.resize = split, channels, resize

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str | None]:
        try:
            return stored_image(self.split, i, self.channels, self.resize), i, None
        except UserError as e:
            return None, i, str(e)


def _readable(items: list) -> tuple[torch.Tensor | None, list[int], list[str]]:
    good = [(x, i) for x, i, bad in items if bad is None]
    images = torch.stack([x for x, _ in good]) if good else None
    return images, [i for _, i in good], [bad for _, _, bad in items if bad is not None]


def layer_names(loaded: Inference) -> list[str]:
    """The layers --layer takes: conv1..conv5, fc6, fc7 (inspection.stages) and fc8 (logits)."""
    return [s.name for s in stages(loaded.model)] + [f"fc{len(stages(loaded.model)) + 1}"]


def _activations(
    loaded: Inference, module: torch.nn.Module, loader: torch.utils.data.DataLoader, layer: str
) -> tuple[list[torch.Tensor], list[int], list[str]]:
    """`module`'s output (flattened, float32, on the CPU) for every readable image of the
    loader, the indices of those images, and the reasons of the unreadable ones."""
    rows, kept, unreadable = [], [], []
    captured: list[torch.Tensor] = []
    hook = module.register_forward_hook(
        lambda _m, _i, output: captured.append(output.detach().float().flatten(1).cpu())
    )
    try:
        for batch, index, bad in tqdm(loader, desc=f"features {layer}", unit="batch", leave=False):
            unreadable += bad
            if batch is None:
                continue
            loaded.logits(loaded.views(batch)[0])  # the centre patch, in the checkpoint's precision
            rows.append(captured.pop())
            kept += index
    finally:
        hook.remove()
    return rows, kept, unreadable


def extract(
    checkpoint: str,
    data: str,
    layer: str = "fc7",
    out: str = "features.safetensors",
    split: str = "train",
    batch_size: int = 64,
    workers: int = -1,
    device: str = "auto",
) -> dict:
    """Write OUT (see the module docstring); returns a summary."""
    loaded = load_inference(checkpoint, resolve_device(device))
    names = layer_names(loaded)
    if layer not in names:
        raise UserError(f"--layer {layer}: not a layer of {checkpoint} ({', '.join(names)})")
    root = Path(data)
    if not root.is_dir():
        raise UserError(f"{data}: no such directory")
    # DATA/<split>/<class>/* (an ImageNet-style folder) or DATA/<class>/*
    classes, images = class_folder(root / split if (root / split).is_dir() else root, root)
    cfg = loaded.config
    module = dict((s.name, s.module) for s in stages(loaded.model)).get(layer, loaded.model)  # fc8: the logits
    workers = default_workers() if workers < 0 else workers
    loader = torch.utils.data.DataLoader(
        _Images(images, cfg.model.in_channels, cfg.data.resize),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_readable,
    )
    rows, kept, unreadable = _activations(loaded, module, loader, layer)
    if not kept:
        raise UserError(f"{data}: no readable image")
    features = torch.cat(rows)
    labels = torch.from_numpy(images.labels[kept]).to(torch.int64)
    metadata = {
        "layer": layer,
        "checkpoint": str(checkpoint),
        "data": str(data),
        "split": split,
        "paths": json.dumps([images.where(i) for i in kept]),
        "classes": json.dumps(classes),
        "unreadable": json.dumps(unreadable),
    }
    atomic_write(Path(out), lambda tmp: save_file({"features": features, "labels": labels}, tmp, metadata=metadata))
    return {
        "out": str(out),
        "layer": layer,
        "images": features.shape[0],
        "dim": features.shape[1],
        "classes": len(classes),
        "unreadable": unreadable,
        "lrn": loaded.lrn,
    }

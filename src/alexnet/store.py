"""Reading a packed store (`alexnet pack`, pack.py): its manifest and its images.

The format: OUT/pack.json (the manifest: format, version, resize, channels, classes, and
per split its shards, count, unreadable files and fingerprint), OUT/<split>-<k>.u8 (raw
uint8 C x H x W images) and OUT/<split>-labels.npy. numpy.memmap and numpy.load with
allow_pickle=False: nothing in a store can run code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .config import DataConfig
from .errors import UserError
from .loaders import InMemoryLoader, ShardedBatches, Split

if TYPE_CHECKING:
    from collections.abc import Callable

MANIFEST = "pack.json"
FORMAT = "alexnet-pack"


def is_packed(name: str) -> bool:
    return (Path(name) / MANIFEST).is_file()


def read_manifest(root: str | Path) -> dict:
    path = Path(root) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable pack manifest ({e})") from e
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path}: not an alexnet pack manifest")
    return manifest


class PackedImages:
    """The images of one split of a store, indexable like a uint8 (N, C, S, S) tensor."""

    def __init__(self, root: Path, split: dict, channels: int, size: int) -> None:
        self.shape = (channels, size, size)
        self.maps, self.starts = [], []
        start = 0
        for shard in split["shards"]:
            path = root / shard["file"]
            expected = shard["count"] * channels * size * size
            if not path.is_file() or path.stat().st_size != expected:
                raise UserError(f"{path}: missing or not {expected:,} bytes (an incomplete pack?)")
            self.maps.append(np.memmap(path, dtype=np.uint8, mode="r", shape=(shard["count"], *self.shape)))
            self.starts.append(start)
            start += shard["count"]
        self.count = start

    def __len__(self) -> int:
        return self.count

    def take(self, idx: list[int]) -> torch.Tensor:
        """The images at these indices as one uint8 tensor: one numpy gather per shard, in
        ascending order within it (sequential reads), written back in the original order."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), *self.shape), dtype=np.uint8)
        shard_of = np.searchsorted(self.starts, idx, side="right") - 1
        for s in np.unique(shard_of):
            where = np.flatnonzero(shard_of == s)
            where = where[np.argsort(idx[where], kind="stable")]
            out[where] = self.maps[s][idx[where] - self.starts[s]]
        return torch.from_numpy(out)


def packed_split(train: bool, cfg: DataConfig, batches_for: Callable[[int], ShardedBatches]) -> Split:
    """A split of a packed store; batches_for(count) gives its ShardedBatches."""
    root = Path(cfg.name)
    manifest = read_manifest(root)
    if manifest["channels"] != cfg.channels:
        raise UserError(f"{root}: packed with {manifest['channels']} channels, the run reads {cfg.channels}")
    if manifest["resize"] != cfg.resize:
        raise UserError(f"{root}: packed at {manifest['resize']} pixels; pass --resize {manifest['resize']}")
    name = "train" if train else "val"
    split = manifest["splits"][name]
    images = PackedImages(root, split, manifest["channels"], manifest["resize"])
    labels = torch.from_numpy(np.load(root / f"{name}-labels.npy", allow_pickle=False))
    if len(labels) != len(images):
        raise UserError(f"{root}: {len(labels)} labels for {len(images)} {name} images")
    batches: ShardedBatches = batches_for(len(labels))
    return Split(
        InMemoryLoader(images, labels, batches),
        list(manifest["classes"]),
        len(labels),
        fingerprint=f"packed-{split['fingerprint']}",
    )

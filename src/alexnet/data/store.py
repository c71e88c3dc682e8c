"""Reading a packed store (`alexnet pack`, pack.py): its manifest, its images, its list.

The format is pack.py's docstring. Raw stores (`--format raw`, and every store of
version 1) are memory-mapped and gathered a batch at a time in the training process, as
in-memory data is. JPEG stores are decoded by DataLoader worker processes, a whole batch
per worker: each worker memory-maps the shards and the offsets itself, so its memory does
not grow with the number of images (the offsets of 1.28M images are a 10 MB map, not a
Python list).

The decoder is libjpeg-turbo through simplejpeg, measured about 2x PIL's decoding of the
same 256x256 JPEG (docs/BENCHMARKS.md, "The ImageNet store"); PIL decodes where simplejpeg
is not installed. Both give the same pixels (tested). numpy.memmap and numpy.load with
allow_pickle=False: nothing in a store can run code.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np
import torch

from ..config import DataConfig
from ..run.errors import UserError
from .loaders import DecodingLoader, InMemoryLoader, ShardedBatches, Split

if TYPE_CHECKING:
    from collections.abc import Callable

MANIFEST = "pack.json"
FORMAT = "alexnet-pack"
SUFFIX = {"jpeg": ".jpg", "raw": ".u8"}  # shard file suffix by encoding

try:  # libjpeg-turbo; see the module docstring
    import simplejpeg
except ImportError:  # pragma: no cover - PIL decodes instead
    simplejpeg = None


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
    """The images of one split of a raw store, indexable like a uint8 (N, C, S, S) tensor."""

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


def decode_jpeg(data: memoryview | bytes, channels: int) -> np.ndarray:
    """One JPEG as a (H, W, C) uint8 array (simplejpeg, else PIL)."""
    if simplejpeg is not None:
        return simplejpeg.decode_jpeg(data, colorspace="RGB" if channels == 3 else "GRAY")
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB" if channels == 3 else "L")).reshape(img.height, img.width, channels)


class JpegImages:
    """The images of one split of a JPEG store; take(indices) decodes them."""

    def __init__(self, root: Path, split: dict, channels: int, size: int, name: str) -> None:
        self.root, self.channels, self.size = root, channels, size
        self.files = [root / s["file"] for s in split["shards"]]
        for path, shard in zip(self.files, split["shards"]):
            if not path.is_file() or path.stat().st_size != shard["bytes"]:
                raise UserError(f"{path}: missing or not {shard['bytes']:,} bytes (an incomplete pack?)")
        self.first = np.cumsum([0] + [s["count"] for s in split["shards"]])  # first image of each shard
        self.offsets_path = root / f"{name}-offsets.npy"
        offsets = self._offsets()
        if len(offsets) != self.first[-1] + 1 or (
            len(self.files) and offsets[-1] != sum(s["bytes"] for s in split["shards"])
        ):
            raise UserError(f"{self.offsets_path}: does not match the manifest's shards (an incomplete pack?)")
        self._maps: list[np.memmap] | None = None  # opened in the process that reads

    def _offsets(self) -> np.ndarray:
        try:
            return np.load(self.offsets_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"{self.offsets_path}: unreadable ({e})") from e

    def __len__(self) -> int:
        return int(self.first[-1])

    def __getstate__(self) -> dict:  # a spawned worker opens its own maps
        return {**self.__dict__, "_maps": None}

    def take(self, idx: list[int]) -> torch.Tensor:
        """The images at these indices as a uint8 (N, C, S, S) tensor (channels_last strides:
        the decoder writes H, W, C)."""
        if self._maps is None:
            self._maps = [np.memmap(p, dtype=np.uint8, mode="r") for p in self.files]
            self._offsets_map = self._offsets()
        offsets, s = self._offsets_map, self.size
        out = np.empty((len(idx), s, s, self.channels), dtype=np.uint8)
        for k, i in enumerate(idx):
            shard = int(np.searchsorted(self.first, i, side="right")) - 1
            base = offsets[self.first[shard]]
            data = self._maps[shard][offsets[i] - base : offsets[i + 1] - base]
            try:
                out[k] = decode_jpeg(memoryview(data), self.channels)
            except (ValueError, OSError) as e:  # a shard changed on disk since it was packed
                raise UserError(f"{self.files[shard]}: image {i} does not decode to {s}x{s} ({e})") from e
        return torch.from_numpy(out).permute(0, 3, 1, 2)


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
    labels = torch.from_numpy(np.load(root / f"{name}-labels.npy", allow_pickle=False))
    c, s = manifest["channels"], manifest["resize"]
    if manifest.get("encoding", "raw") == "jpeg":
        images: PackedImages | JpegImages = JpegImages(root, split, c, s, name)
    else:
        images = PackedImages(root, split, c, s)
    if len(labels) != len(images):
        raise UserError(f"{root}: {len(labels)} labels for {len(images)} {name} images")
    batches: ShardedBatches = batches_for(len(labels))
    if isinstance(images, JpegImages):
        loader = DecodingLoader(images, labels, batches, cfg.workers)
    else:
        loader = InMemoryLoader(images, labels, batches)
    return Split(loader, list(manifest["classes"]), len(labels), fingerprint=f"packed-{split['fingerprint']}")


def list_store(root: str | Path, out: TextIO | None = None) -> int:
    """`alexnet pack --list OUT`: CSV (split,index,source,class,label) of every stored image;
    returns the number of rows."""
    root = Path(root)
    manifest = read_manifest(root)
    if manifest.get("version", 1) < 2:
        raise UserError(f"{root}: packed by an earlier version, which kept no source names; pack it again")
    classes = manifest["classes"]
    writer = csv.writer(out or sys.stdout, lineterminator="\n")
    writer.writerow(["split", "index", "source", "class", "label"])
    rows = 0
    for name in manifest["splits"]:
        labels = np.load(root / f"{name}-labels.npy", allow_pickle=False)
        with open(root / f"{name}-sources.txt", encoding="utf-8") as f:
            for i, (source, label) in enumerate(zip(f, labels)):
                writer.writerow([name, i, source.rstrip("\n"), classes[label], int(label)])
                rows += 1
    return rows

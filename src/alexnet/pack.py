"""`alexnet pack DATA OUT`: decode an image folder once into a memory-mappable store.

Every image is stored as what the loaders hand the device anyway: the central
resize x resize patch (§2) as uint8, C x H x W, in shards of raw bytes
(OUT/<split>-<k>.u8) with int64 labels (OUT/<split>-labels.npy) and a manifest
(OUT/pack.json). Training then reads batches at memory (or page-cache) speed and the
random crops, mirrors, mean subtraction and PCA lighting run on the device exactly as
for JPEGs (augment.py), so a packed store and its folder give the same inputs.

`--data OUT` trains from the store (store.py reads it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from .config import DataConfig
from .data import load_split
from .errors import UserError
from .jsonio import write_json
from .store import FORMAT, MANIFEST

if TYPE_CHECKING:
    from collections.abc import Callable

SHARD_BYTES = 1 << 32  # 4 GiB of images per shard file


def pack(
    data: str,
    out: str,
    resize: int = 256,
    workers: int = -1,
    limit: int | None = None,
    batch_size: int = 64,
    log: Callable[[str], None] = print,
) -> dict:
    """Decode DATA's train/ and val/ into OUT; returns the manifest."""
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir}: exists and is not empty")
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cfg = DataConfig(name=data, resize=resize, workers=workers)
    manifest = {
        "format": FORMAT,
        "version": 1,
        "source": str(Path(data).resolve()),
        "resize": resize,
        "channels": cfg.channels,
        "splits": {},
    }
    for split_name, train in (("train", True), ("val", False)):
        split = load_split(train, cfg, batch_size, limit=limit, ordered=True)
        manifest["classes"] = split.classes
        per_image = cfg.channels * resize * resize
        per_shard = max(1, SHARD_BYTES // per_image)
        shards, labels, written, f = [], [], 0, None
        for images, y in tqdm(split.loader, desc=f"pack {split_name}", leave=False, dynamic_ncols=True):
            for i in range(images.shape[0]):
                if f is None or written == per_shard:
                    if f is not None:
                        f.close()
                    shards.append({"file": f"{split_name}-{len(shards):05d}.u8", "count": 0})
                    f, written = open(tmp / shards[-1]["file"], "wb"), 0
                f.write(images[i].contiguous().numpy().tobytes())
                shards[-1]["count"] += 1
                written += 1
            labels.append(y)
        if f is not None:
            f.close()
        label_array = torch.cat(labels).numpy().astype(np.int64) if labels else np.zeros(0, np.int64)
        np.save(tmp / f"{split_name}-labels.npy", label_array, allow_pickle=False)
        unreadable = list(split.loader.unreadable)
        manifest["splits"][split_name] = {
            "count": int(label_array.size),
            "shards": shards,
            "unreadable": unreadable,
            "fingerprint": split.fingerprint,
        }
        log(
            f"alexnet: packed {label_array.size:,} {split_name} images"
            + (f", skipped {len(unreadable)} unreadable" if unreadable else "")
        )
    write_json(tmp / MANIFEST, manifest)
    if out_dir.exists():  # empty (checked above): the finished store takes its place
        out_dir.rmdir()
    os.replace(tmp, out_dir)
    return manifest

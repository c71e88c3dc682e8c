"""Figure 4's neighbours: the fc7 code of every training image, indexed once and searched.

The index holds the fc7 activations (model.penultimate, eval mode, evaluation's
preprocessing: the checkpoint's Inference) of every training image in file order, fp16 on the CPU, as safetensors
cached beside the checkpoint (or in the cache folder when that is read-only), tied to the
checkpoint's bytes and to the data. `alexnet neighbors`, `alexnet serve`'s neighbours and
figures.py's Figure 4 search the same index: Euclidean distance, in chunks of SEARCH_CHUNK
rows, the k nearest kept as it goes. Where neither place takes the cache file (read-only,
or no room: a full disk), a one-line warning says why and the index lasts the process.
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

from ..config import cache_dir
from ..run.errors import DiskFull, UserError
from ..run.jsonio import atomic_write
from .inspection import data_url, image_array

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ..core.checkpoint import Inference
    from ..core.engine import Classifier
    from ..data.loaders import Loader, Split

INDEX_BATCH = 256  # training images per forward pass while building the fc7 index
FP16_MAX = 65504.0
INDEX_FORMAT, INDEX_VERSION = "alexnet-fc7-index", "1"
SEARCH_CHUNK = 8192  # index rows per distance computation (8192 x 4096 fp32: 128 MiB)


@torch.no_grad()
def fc7_features(net: Classifier, images: torch.Tensor) -> torch.Tensor:
    """fc7 activations (model.penultimate, eval mode, fp32 whatever the precision: the
    index's distances) of uint8 images, as evaluation preprocesses them (mean
    subtraction, std, centre crop)."""
    net.model.eval()
    return net.model.penultimate(net.views(images)[0]).float()


def fc7_codes(net: Classifier, images: torch.Tensor) -> torch.Tensor:
    """fc7 activations as the index stores them: fp16 on the CPU (saturated at fp16's
    largest value rather than infinite). Queries are rounded the same way, so an image
    that is in the index is at distance 0 from itself.

    Activations that are already infinite or NaN in fp32 (a model whose weights overflow)
    are refused: saturated, every image would be at distance 0 from every other."""
    features = fc7_features(net, images)
    if not torch.isfinite(features).all():
        raise UserError(
            "fc7 activations are not finite (the weights overflow on these images): no meaningful nearest neighbours"
        )
    return features.clamp(-FP16_MAX, FP16_MAX).half().cpu()


def _distances(queries: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    # the direct difference, not |a|^2 + |b|^2 - 2ab: an image's distance to itself is 0
    return torch.cdist(queries, feats, compute_mode="donot_use_mm_for_euclid_dist")


def _keep_nearest(dist: torch.Tensor, index: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest distances per row and their indices; ties go to the lower index.

    torch.topk does not promise an order among equal values; a stable sort of candidates
    that are in index order does, so streaming and a search over everything at once agree.
    """
    order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
    return dist.gather(1, order), index.gather(1, order)


def nearest(queries: torch.Tensor, chunks: Iterable[torch.Tensor], k: int) -> dict:
    """For each query (N x D), the k nearest rows of the feature chunks taken in order (a
    row's index is its position over all chunks): a running top-k, so only one chunk and
    the k best per query are in memory. Distances and indices are N x k, nearest first."""
    q = queries.float()
    best_d = torch.empty(q.shape[0], 0, device=q.device)
    best_i = torch.empty(q.shape[0], 0, dtype=torch.long, device=q.device)
    seen = 0
    for f in chunks:
        f = f.to(q.device, torch.float32)
        idx = torch.arange(seen, seen + f.shape[0], device=q.device).expand(q.shape[0], -1)
        best_d, best_i = _keep_nearest(torch.cat([best_d, _distances(q, f)], 1), torch.cat([best_i, idx], 1), k)
        seen += f.shape[0]
    return {"distances": best_d.cpu(), "indices": best_i.cpu(), "train_images": seen}


@torch.no_grad()
def nearest_neighbors(net: Classifier, queries: torch.Tensor, train_loader: Loader, k: int) -> dict:
    """The search without an index, in fp32: fc7 of every batch of train_loader (every
    training image once, in order) against the queries' (uint8 images), streamed. The
    reference the index's search is tested against."""
    q = fc7_features(net, queries)
    return nearest(q, (fc7_features(net, images) for images, _ in train_loader), k)


@dataclass
class Fc7Index:
    """The fc7 code of every image of a training split, in file order."""

    features: torch.Tensor  # (N, D) float16 on the CPU
    labels: torch.Tensor  # (N,) int64
    split: Split  # where the images are (split.loader.items)
    path: Path | None  # the cache file it was read from or written to (None: not cached)
    built_seconds: float  # spent computing it in this call; 0 when read from the cache

    @property
    def size(self) -> int:
        return self.features.shape[0]

    def nearest(self, codes: torch.Tensor, k: int) -> dict:
        """The k training images nearest to each fc7 code (N x D), nearest first."""
        chunks = (self.features[i : i + SEARCH_CHUNK] for i in range(0, self.size, SEARCH_CHUNK))
        return nearest(codes, chunks, k)


def checkpoint_key(path: str | Path) -> dict[str, str] | None:
    """What ties a cached index to a checkpoint file: its name, size and modification time
    (a retrained or replaced checkpoint changes them; hashing 240 MB each time would cost
    a second). None if the file cannot be read: no caching."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return {
        "checkpoint": Path(path).name,
        "checkpoint_size": str(st.st_size),
        "checkpoint_mtime_ns": str(st.st_mtime_ns),
    }


def index_paths(checkpoint: Path, fingerprint: str) -> list[Path]:
    """Where the index of `checkpoint` over the split `fingerprint` is cached: beside the
    checkpoint (CHECKPOINT_STEM.fc7-TAG.safetensors, one file per training set), else,
    where that folder is read-only, in the user's cache."""
    name = f"{checkpoint.stem}.fc7-{hashlib.sha1(fingerprint.encode()).hexdigest()[:12]}.safetensors"
    owner = hashlib.sha1(str(checkpoint.resolve()).encode()).hexdigest()[:12]
    return [checkpoint.with_name(name), cache_dir() / "fc7-index" / f"{owner}-{name}"]


def _read_index(path: Path, expected: dict[str, str]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The features and labels of a cache file that matches `expected`, else None (missing,
    stale, unreadable: then the index is computed again)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if any(meta.get(k) != v for k, v in expected.items()):
                return None
            feats, labels = f.get_tensor("features"), f.get_tensor("labels")
    except (SafetensorError, OSError, ValueError, KeyError):
        return None
    rows = int(expected["images"])
    if feats.dtype != torch.float16 or feats.dim() != 2 or feats.shape[0] != rows or labels.shape != (rows,):
        return None
    return feats, labels


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def fc7_index(
    net: Classifier,
    split: Split,
    checkpoint: str | Path,
    key: dict[str, str] | None,
    limit: int | None,
    log: Callable[[str], None] = _stderr,
) -> Fc7Index:
    """The fc7 index of `split` (every training image once, in order: an ordered, strict
    split) for the model of `checkpoint`, read from its cache if the cache was made for
    this checkpoint file (key: checkpoint_key, taken before the model was loaded), this
    split (its fingerprint) and this limit; else computed and cached (atomically)."""
    expected = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        **(key or {}),
        "fingerprint": split.fingerprint,
        "limit": str(limit) if limit else "none",
        "images": str(split.size),
    }
    paths = index_paths(Path(checkpoint), split.fingerprint)
    for path in paths if key else []:
        found = _read_index(path, expected)
        if found is not None:
            return Fc7Index(*found, split, path, 0.0)
    log(f"alexnet: computing the fc7 index of {split.size:,} training images (once for this checkpoint)")
    start = time.perf_counter()
    feats, labels = [], []
    for images, y in split.loader:
        feats.append(fc7_codes(net, images))
        labels.append(y.to(torch.int64))
    features, labels_ = torch.cat(feats), torch.cat(labels)
    seconds = time.perf_counter() - start
    written = _write_index(paths, {"features": features, "labels": labels_}, expected, log) if key else None
    return Fc7Index(features, labels_, split, written, seconds)


def _write_index(
    paths: list[Path], tensors: dict[str, torch.Tensor], meta: dict[str, str], log: Callable
) -> Path | None:
    errors = []
    for path in paths:  # beside the checkpoint if its folder is writable, else the cache
        try:
            atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta), sweep=True)
            return path
        except (OSError, DiskFull) as e:
            errors.append(str(e) if isinstance(e, DiskFull) else f"{path}: {e.strerror or e}")
    log(f"alexnet: warning: could not cache the fc7 index ({'; '.join(errors)}); it lasts this process")
    return None


def neighbors(loaded: Inference, index: Fc7Index, image: torch.Tensor, k: int) -> dict:
    """The k training images nearest to the image's centre patch in fc7 (Figure 4)."""
    if not 1 <= k <= index.size:
        raise UserError(f"k must be from 1 to the {index.size:,} training images, got {k}")
    code = fc7_codes(loaded, image[None])
    found = index.nearest(code, k)
    idx = found["indices"][0].tolist()
    images, labels = index.split.loader.items(idx)
    names = dict(zip(loaded.classes, loaded.class_names))  # the split's class -> its readable name
    labels = [names.get(c, c) for c in (index.split.classes[y] for y in labels)]
    return {
        "neighbors": [
            {"index": i, "label": label, "distance": d, "image": data_url(image_array(img))}
            for i, label, d, img in zip(idx, labels, found["distances"][0].tolist(), images)
        ],
        "train_images": index.size,
        "index_seconds": index.built_seconds,
    }

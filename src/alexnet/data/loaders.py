"""The data contract: a Split, and the Loader protocol every loader implements.

A loader yields (uint8 images N x C x H x W, int64 labels N) batches of one process's
share of a split (ShardedBatches decides which), at the data's stored size; floats, crops,
mirrors and lighting happen on the device (augment.py). Three loaders implement it:

- InMemoryLoader: a uint8 tensor in memory (Fashion-MNIST) or a raw store's
  memory-mapped images (store.py): one gather per batch, in the training process;
- DecodingLoader: a JPEG store's images (store.py): DataLoader workers decode a whole
  batch each;
- FolderLoader: a DataLoader over image files (datasets.py decodes them) that skips
  unreadable files and lists them.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from ..run.distributed import Dist, check_batch
from ..run.errors import UserError

if TYPE_CHECKING:
    from .store import JpegImages, PackedImages

Batch = tuple[torch.Tensor, torch.Tensor]


class Loader(Protocol):
    unreadable: list[str]  # files skipped so far (always empty for in-memory data)
    workers: int  # DataLoader worker processes (0: none)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Draw epoch `epoch`'s order; start at batch `start` (a mid-epoch resume)."""

    def __len__(self) -> int:
        """Batches in an epoch, for this process."""

    def __iter__(self) -> Iterator[Batch]: ...

    def items(self, indices: list[int]) -> tuple[torch.Tensor, list[int]]:
        """The uint8 images and labels at these positions of the split (file order)."""

    def pin(self) -> None:
        """Hand out batches in pinned (page-locked) memory, made ahead of the step, so that
        a copy to a CUDA device with non_blocking=True overlaps the GPU's work."""


@dataclass
class Split:
    """One split of a dataset: this process's loader and what describes the split."""

    loader: Loader
    classes: list[str]
    size: int  # number of images
    fingerprint: str  # identifies the images (cache key of the mean image)


class ShardedBatches:
    """The index batches one process reads in an epoch (a DataLoader batch_sampler).

    Training (shuffle=True): the global order is a permutation drawn from (seed, epoch);
    global batch i is order[i*B:(i+1)*B], and process r of N takes its r-th slice of
    B / N, so N processes see exactly the batches one process would (and DDP averages
    their gradients into the same step). The last partial batch is dropped.
    Evaluation and statistics (shuffle=False): process r takes images r, r+N, r+2N, ...:
    every image exactly once, no padding. `start` skips batches for a mid-epoch resume.
    """

    def __init__(self, n: int, global_batch: int, d: Dist, shuffle: bool, seed: int = 0) -> None:
        self.n, self.global_batch, self.d, self.shuffle, self.seed = n, global_batch, d, shuffle, seed
        self.batch = check_batch(global_batch, d)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        if self.shuffle:
            return self.n // self.global_batch
        return -(-len(range(self.d.rank, self.n, self.d.world)) // self.batch)

    def __iter__(self) -> Iterator[list[int]]:
        r, b = self.d.rank, self.batch
        if self.shuffle:
            order = torch.randperm(
                self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            ).tolist()
            for i in range(self.start, len(self)):
                yield order[i * self.global_batch + r * b : i * self.global_batch + (r + 1) * b]
        else:
            mine = range(r, self.n, self.d.world)
            for i in range(self.start, len(self)):
                yield list(mine[i * b : (i + 1) * b])


PREFETCH = 2  # batches made ahead of the step by a pinned in-memory loader


def ahead(items: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """`items` in order, made up to `depth` ahead by a thread; an exception in it is raised
    here, and a consumer that stops early stops the thread."""
    q: queue.Queue = queue.Queue(depth)
    stop, end = threading.Event(), object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def fill() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(end)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            put(e)

    threading.Thread(target=fill, daemon=True).start()
    try:
        while (item := q.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


class InMemoryLoader:
    """Batches of an in-memory uint8 tensor (Fashion-MNIST, 47 MB) or of a packed store's
    memory-mapped images (anything with take(indices) -> uint8 tensor), where a
    DataLoader's per-item work would cost more than the model: one gather per batch."""

    workers = 0

    def __init__(self, images: torch.Tensor | PackedImages, labels: torch.Tensor, batches: ShardedBatches) -> None:
        self.images, self.labels, self.batches = images, labels, batches
        self.unreadable: list[str] = []
        self.pinned = False

    def pin(self) -> None:
        self.pinned = True

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.batches.set_epoch(epoch, start)

    def __len__(self) -> int:
        return len(self.batches)

    def _take(self, idx: list[int]) -> torch.Tensor:
        if isinstance(self.images, torch.Tensor):
            return self.images.index_select(0, torch.tensor(idx, dtype=torch.long))
        return self.images.take(idx)  # a packed store's memory-mapped shards

    def __iter__(self) -> Iterator[Batch]:
        batches = ((self._take(idx), self.labels[idx]) for idx in self.batches)
        if not self.pinned:
            yield from batches
            return
        # a thread gathers and pins the next batches while the step runs (the gather and
        # torch's pinning release the GIL)
        yield from ahead(((x.pin_memory(), y.pin_memory()) for x, y in batches), PREFETCH)

    def items(self, indices: list[int]) -> tuple[torch.Tensor, list[int]]:
        return self._take(list(indices)), self.labels[list(indices)].tolist()


class _WholeBatches(torch.utils.data.Dataset):
    """dataset[indices] -> (uint8 images, labels): one worker call decodes a whole batch."""

    def __init__(self, images: JpegImages, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: list[int]) -> Batch:
        return self.images.take(idx), self.labels[idx]


class DecodingLoader:
    """Batches of images that cost work to get (a JPEG store: anything with
    take(indices) -> uint8 tensor), each made whole by one DataLoader worker process, so
    `workers` batches are decoded at once. Nothing is unreadable here: pack kept only the
    images it decoded."""

    def __init__(self, images: JpegImages, labels: torch.Tensor, batches: ShardedBatches, workers: int) -> None:
        self.images, self.labels, self.batches = images, labels, batches
        self.unreadable: list[str] = []
        self.workers = default_workers() if workers < 0 else workers
        self._loader = torch.utils.data.DataLoader(
            _WholeBatches(images, labels),
            sampler=batches,
            batch_size=None,  # the sampler hands out whole batches of indices
            num_workers=self.workers,
            pin_memory=False,  # pin(): only for a CUDA run (pinning opens a CUDA context)
            persistent_workers=self.workers > 0,
        )

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.batches.set_epoch(epoch, start)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        return iter(self._loader)

    def pin(self) -> None:
        self._loader.pin_memory = True  # read when the (persistent) workers' iterator is made

    def items(self, indices: list[int]) -> tuple[torch.Tensor, list[int]]:
        return self.images.take(list(indices)), self.labels[list(indices)].tolist()


def default_workers() -> int:
    """DataLoader workers per training process: the cores this process may use (its CPU
    affinity, which containers and job schedulers set), shared among the processes
    torchrun starts on this machine, less one each for the training process itself."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by torchrun
    return max(1, cores // max(1, local) - 1)


class _Tolerant(torch.utils.data.Dataset):
    """Hands out (image, label, None), or (None, -1, reason) for a file that cannot be read,
    so that a corrupt file in a training set of a million does not end the run."""

    def __init__(self, dataset: torch.utils.data.Dataset[tuple[torch.Tensor, int]]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str | None]:
        try:
            image, label = self.dataset[i]
            return image, label, None
        except UserError as e:
            return None, -1, str(e)


def _collate_readable(
    items: list[tuple[torch.Tensor | None, int, str | None]],
) -> tuple[torch.Tensor | None, torch.Tensor | None, list[str]]:
    good = [(x, y) for x, y, bad in items if bad is None]
    bad = [reason for _, _, reason in items if reason is not None]
    if not good:
        return None, None, bad
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good]), bad


class FolderLoader:
    """A DataLoader over ShardedBatches of a map-style dataset of (uint8 image, label) that
    skips unreadable files (the dataset raises UserError for them) and remembers them.

    strict: the first unreadable file ends the run with its path instead.
    """

    def __init__(
        self,
        dataset: torch.utils.data.Dataset[tuple[torch.Tensor, int]],
        batches: ShardedBatches,
        workers: int,
        strict: bool = False,
    ) -> None:
        self.dataset, self.batches, self.strict = dataset, batches, strict
        self.unreadable: list[str] = []
        self.workers = default_workers() if workers < 0 else workers
        self._loader = torch.utils.data.DataLoader(
            _Tolerant(dataset),
            batch_sampler=batches,
            num_workers=self.workers,
            collate_fn=_collate_readable,
            pin_memory=False,  # pin(): only for a CUDA run (pinning opens a CUDA context)
            persistent_workers=self.workers > 0,
        )

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.batches.set_epoch(epoch, start)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[Batch]:
        for images, labels, bad in self._loader:
            if bad:
                if self.strict:
                    raise UserError(f"{bad[0]} (--strict stops at the first unreadable file)")
                self.unreadable += [b for b in bad if b not in self.unreadable]
            if images is None:
                raise UserError(f"no readable image in a whole batch, e.g. {bad[0]}")
            yield images, labels

    def pin(self) -> None:
        self._loader.pin_memory = True  # read when the (persistent) workers' iterator is made

    def items(self, indices: list[int]) -> tuple[torch.Tensor, list[int]]:
        pairs = [self.dataset[i] for i in indices]  # an unreadable file: its UserError
        return torch.stack([x for x, _ in pairs]), [int(y) for _, y in pairs]

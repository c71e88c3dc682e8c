"""Datasets and loaders: Fashion-MNIST (the embedded default) and ImageNet-style folders.

Every loader yields (uint8 images N x C x H x W, int64 labels) at the data's stored size;
conversion to float, mean subtraction, crops, mirrors and lighting happen on the training
device in `augment.py`, so the host ships 4x fewer bytes and a GPU does the arithmetic.

- Fashion-MNIST is read with torchvision.datasets.FashionMNIST from Debian's package
  (`dataset-fashion-mnist`, gzipped IDX files in /usr/share/datasets/fashion-mnist) or
  a `--data-dir`; the files are decompressed once into a cache, since torchvision reads
  only uncompressed files. torchvision downloads only with `--download`.
- An ImageNet-style folder (PATH/train/<class>/*, PATH/val/<class>/*) is read lazily
  with torchvision.datasets.ImageFolder and transforms v2 (§2: shorter side to 256, the
  central 256x256 patch); the 227 crops of §4.1 are taken on the device.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision import datasets
from torchvision.transforms import v2

from .config import DataConfig
from .errors import UserError
from .imagenet import FlatFolder, val_labels

FASHION_MNIST = "fashion-mnist"
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_MNIST_HELP = (
    "Fashion-MNIST not found: install Debian's package (as root: apt-get install -y "
    "dataset-fashion-mnist), pass --data-dir DIR with the four *-ubyte(.gz) files, "
    "or pass --download to let torchvision fetch it")
# Fashion-MNIST's training-set pixel mean and std in 0..255 units.
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (72.94,), (90.02,)


def cache_dir() -> Path:
    root = os.environ.get("ALEXNET_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "alexnet")
    return Path(root)


@dataclass
class Split:
    """One split of a dataset: a loader of uint8 batches and what describes it."""
    loader: object          # iterable of (uint8 N x C x H x W, int64 N); has set_epoch(e)
    classes: list[str]
    size: int               # number of images
    fingerprint: str        # identifies the images (cache key of the mean image)
    workers: int = 0        # DataLoader worker processes


# ----------------------------------------------------------------------------- Fashion-MNIST

def _find_fashion_mnist(data_dir: str | None) -> dict[str, Path]:
    """Path of each IDX file, plain or gzipped, in data_dir or Debian's folder."""
    candidates = [Path(data_dir)] if data_dir else [DEBIAN_FASHION_MNIST_DIR]
    if data_dir:
        candidates.append(Path(data_dir) / "FashionMNIST" / "raw")  # torchvision's layout
        if not Path(data_dir).is_dir():
            raise UserError(f"--data-dir {data_dir}: no such directory")
    for folder in candidates:
        found = {}
        for name in FASHION_MNIST_FILES:
            for path in (folder / name, folder / f"{name}.gz"):
                if path.is_file():
                    found[name] = path
                    break
        if len(found) == len(FASHION_MNIST_FILES):
            return found
    where = data_dir or str(DEBIAN_FASHION_MNIST_DIR)
    raise UserError(f"{FASHION_MNIST_HELP} (looked in {where})")


def _materialise(files: dict[str, Path]) -> Path:
    """A torchvision root (ROOT/FashionMNIST/raw/<uncompressed files>) for these files."""
    source = files[FASHION_MNIST_FILES[0]].parent.resolve()
    root = cache_dir() / "fashion-mnist" / str(source).strip("/").replace("/", "_")
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, path in files.items():
        target = raw / name
        if target.is_file() and target.stat().st_size > 0:
            continue
        opener = gzip.open if path.suffix == ".gz" else open
        fd, tmp = tempfile.mkstemp(dir=raw, prefix=f".{name}.")
        try:
            with opener(path, "rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, target)
        except (OSError, EOFError) as e:
            os.unlink(tmp)
            raise UserError(f"{path}: cannot read ({e})") from e
    return root


def fashion_mnist(train: bool, cfg: DataConfig) -> datasets.FashionMNIST:
    try:
        if cfg.download:
            root = cfg.data_dir or str(cache_dir() / "fashion-mnist" / "download")
            return datasets.FashionMNIST(root, train=train, download=True)
        return datasets.FashionMNIST(_materialise(_find_fashion_mnist(cfg.data_dir)), train=train)
    except RuntimeError as e:  # torchvision's "Dataset not found" / corrupt IDX files
        raise UserError(f"Fashion-MNIST: {e}") from e


class InMemoryLoader:
    """Batches of an in-memory uint8 tensor, reshuffled each epoch from (seed, epoch).

    Used for Fashion-MNIST (47 MB), where a DataLoader's per-item indexing would cost more
    than the model: one index_select per batch instead.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 shuffle: bool, seed: int = 0, drop_last: bool = False):
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.images.index_select(0, idx), self.labels.index_select(0, idx)


def fashion_mnist_split(train: bool, cfg: DataConfig, batch_size: int, seed: int,
                        limit: int | None = None, ordered: bool = False) -> Split:
    ds = fashion_mnist(train, cfg)
    images, labels = ds.data.unsqueeze(1), ds.targets
    if limit:
        images, labels = images[:limit], labels[:limit]
    shuffle = train and not ordered
    loader = InMemoryLoader(images, labels, batch_size, shuffle=shuffle, seed=seed, drop_last=shuffle)
    name = f"fashion-mnist-{'train' if train else 'test'}-{len(labels)}"
    return Split(loader, list(ds.classes), len(labels), fingerprint=name)


# ----------------------------------------------------------------------------- image files

def load_image(path: str | Path, channels: int) -> Image.Image:
    """Open an image file as RGB (channels=3) or grayscale (channels=1), EXIF-upright.

    Grayscale, CMYK, palette and RGBA files are converted, so a colour model takes a
    grayscale photo and a grayscale model a colour one.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img = img.convert("RGB" if channels == 3 else "L")
            img.load()
            return img
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{path}: not a readable image ({e})") from e


def stored_transform(resize: int) -> v2.Transform:
    """§2: shorter side to `resize`, then the central resize x resize patch, as uint8."""
    return v2.Compose([v2.PILToTensor(), v2.Resize(resize, antialias=True), v2.CenterCrop(resize)])


def default_workers() -> int:
    """DataLoader workers: one per core, leaving one for the training process."""
    return max(1, (os.cpu_count() or 1) - 1)


class FolderLoader:
    """A DataLoader whose shuffling order and augmentation seeds come from (seed, epoch)."""

    def __init__(self, dataset, batch_size: int, shuffle: bool, seed: int, workers: int):
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        workers = default_workers() if workers < 0 else workers
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle, num_workers=workers,
            pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
            generator=self.generator)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed * 100_003 + epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return iter(self.loader)


def folder_split(train: bool, cfg: DataConfig, batch_size: int, seed: int,
                 limit: int | None = None, ordered: bool = False) -> Split:
    root = Path(cfg.name)
    split_dir = root / ("train" if train else "val")
    if not split_dir.is_dir():
        raise UserError(f"{split_dir}: no such directory (expected {root}/train/<class>/* "
                        f"and {root}/val/<class>/*)")
    load = functools.partial(load_image, channels=cfg.channels)
    try:
        if train or any(e.is_dir() for e in os.scandir(split_dir)):  # <split>/<class>/*
            ds = datasets.ImageFolder(str(split_dir), transform=stored_transform(cfg.resize), loader=load)
        else:  # ILSVRC's flat val/ folder with a ground-truth file
            classes, _ = datasets.folder.find_classes(str(root / "train"))
            labels = val_labels(root, cfg.val_labels, cfg.synsets)
            ds = FlatFolder(split_dir, labels, classes, load, stored_transform(cfg.resize))
    except (FileNotFoundError, OSError) as e:
        raise UserError(f"{split_dir}: {e}") from e
    classes = list(ds.classes)
    paths = [p for p, _ in ds.samples]
    if limit:
        # a fixed random subset, so that every class can appear in it
        keep = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:limit].sort().values
        ds = torch.utils.data.Subset(ds, keep.tolist())
        paths = [paths[i] for i in keep.tolist()]
    loader = FolderLoader(ds, batch_size, train and not ordered, seed, cfg.workers)
    digest = hashlib.sha1("\n".join(os.path.relpath(p, split_dir) for p in paths).encode()).hexdigest()
    return Split(loader, classes, len(ds), fingerprint=f"{len(paths)}-{digest[:16]}",
                 workers=loader.loader.num_workers)


def is_fashion_mnist(cfg: DataConfig) -> bool:
    return cfg.name == FASHION_MNIST


def load_split(train: bool, cfg: DataConfig, batch_size: int, seed: int = 0,
               limit: int | None = None, ordered: bool = False) -> Split:
    """The training (train=True) or validation/test split named by cfg.

    The training split is shuffled (from seed and epoch) and drops its last partial
    batch, unless `ordered`: every image once in file order, for statistics.
    """
    if is_fashion_mnist(cfg):
        return fashion_mnist_split(train, cfg, batch_size, seed, limit, ordered)
    return folder_split(train, cfg, batch_size, seed, limit, ordered)


def write_samples(cfg: DataConfig, count: int, out: str | Path) -> list[Path]:
    """Write the first `count` Fashion-MNIST test images as PNGs named INDEX_CLASS.png."""
    if not is_fashion_mnist(cfg):
        raise UserError(f"{cfg.name}: samples are for fashion-mnist; an image folder has its own files")
    ds = fashion_mnist(False, cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(min(count, len(ds))):
        name = ds.classes[int(ds.targets[i])].replace("/", "-").replace(" ", "_")
        path = out / f"{i:05d}_{name}.png"
        Image.fromarray(ds.data[i].numpy(), mode="L").save(path)
        paths.append(path)
    return paths

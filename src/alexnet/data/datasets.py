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
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import BinaryIO

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision import datasets
from torchvision.transforms import v2

from ..config import DataConfig, cache_dir
from ..run.distributed import Dist
from ..run.errors import DiskFull, UserError, full_errno
from ..run.jsonio import atomic_write
from .fashion import is_fashion_mnist
from .imagenet import FlatFolder, val_labels
from .loaders import FolderLoader, InMemoryLoader, ShardedBatches, Split
from .store import is_packed, packed_split

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
FASHION_MNIST_HELP = (
    "Fashion-MNIST not found: install Debian's package (as root: apt-get install -y "
    "dataset-fashion-mnist), pass --data-dir DIR with the four *-ubyte(.gz) files, "
    "or pass --download to let torchvision fetch it"
)


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
            code = full_errno(e)
            if code is not None:  # the cache's disk, not the file, is the problem
                raise DiskFull(target, code, f"nothing was written (decompressing {path})") from e
            raise UserError(f"{path}: cannot read ({e})") from e
    return root


def fashion_mnist(train: bool, cfg: DataConfig) -> datasets.FashionMNIST:
    try:
        if cfg.download:  # only when the user asks (--download); never a default or a test
            root = cfg.data_dir or str(cache_dir() / "fashion-mnist" / "download")
            return datasets.FashionMNIST(root, train=train, download=cfg.download)
        return datasets.FashionMNIST(_materialise(_find_fashion_mnist(cfg.data_dir)), train=train)
    except RuntimeError as e:  # torchvision's "Dataset not found" / corrupt IDX files
        raise UserError(f"Fashion-MNIST: {e}") from e


def fashion_mnist_split(
    train: bool,
    cfg: DataConfig,
    batch_size: int,
    seed: int,
    limit: int | None = None,
    ordered: bool = False,
    d: Dist = Dist(),
) -> Split:
    ds = fashion_mnist(train, cfg)
    images, labels = ds.data.unsqueeze(1), ds.targets
    if limit:
        images, labels = images[:limit], labels[:limit]
    batches = ShardedBatches(len(labels), batch_size, d, shuffle=train and not ordered, seed=seed)
    name = f"fashion-mnist-{'train' if train else 'test'}-{len(labels)}"
    return Split(InMemoryLoader(images, labels, batches), list(ds.classes), len(labels), fingerprint=name)


# ----------------------------------------------------------------------------- image files


def load_image(path: str | Path, channels: int, draft: int | None = None) -> Image.Image:
    """Open an image file as RGB (channels=3) or grayscale (channels=1), EXIF-upright.

    draft: a JPEG whose sides are both at least twice this is decoded at 1/2, 1/4 or 1/8
    size by libjpeg itself (PIL's draft mode), keeping both sides at least `draft`: the
    training path scales the shorter side down to `resize` anyway, and the full-size
    pixels would be decoded only to be averaged away. None: every pixel, as torchvision.

    Grayscale, CMYK, palette and RGBA files are converted (alpha is dropped, as
    torchvision's loader does), so a colour model takes a grayscale photo and a grayscale
    model a colour one; 16-bit images are scaled to 8 bits (PIL's own conversion clips
    them, which turns almost every pixel white). An animated image gives its first frame.
    An image longer than 64:1 keeps its central 64:1 part: the evaluation path uses only
    the central square, and scaling the shorter side of a 1 x 20000 strip to 256 would
    otherwise make a 256 x 5,120,000 image.

    A UserError names the file for: no such file, not a file, not an image PIL reads,
    a truncated file (not decoded partially: a half-grey photo would still be classified,
    confidently and wrongly), and more than PIL's Image.MAX_IMAGE_PIXELS pixels (a
    decompression bomb: PIL only warns up to twice that, then refuses), refused from
    the header alone, before any pixel is decoded.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    return open_image(path, str(path), channels, draft)


def open_image(source: Path | BinaryIO, name: str, channels: int, draft: int | None = None) -> Image.Image:
    """load_image's decoding and checks, for a path or a file object (a member of a tar that
    `alexnet pack` reads); errors name the file as `name`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                if draft:
                    img.draft(None, (draft, draft))
                ImageOps.exif_transpose(img, in_place=True)  # not a copy of every upright image
                if img.mode.startswith("I"):  # 16- or 32-bit integers: 65535 -> 255
                    img = img.convert("I").point(lambda v: v / 257)
                mode = "RGB" if channels == 3 else "L"
                img = img if img.mode == mode else img.convert(mode)  # convert() copies even then
                img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(pixels.group(1)):,} pixels" if pixels else "too many pixels"
        raise UserError(
            f"{name}: refused: {size}, more than the {Image.MAX_IMAGE_PIXELS:,} an "
            "image may have here (a decompression bomb?)"
        ) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{name}: not a readable image ({e})") from e
    w, h = img.size
    if max(w, h) > 64 * min(w, h):
        long = 64 * min(w, h)
        left, top = (w - long) // 2 if w > h else 0, (h - long) // 2 if h > w else 0
        img = img.crop((left, top, left + min(w, long), top + min(h, long)))
    return img


def stored_transform(resize: int) -> v2.Transform:
    """§2: shorter side to `resize`, then the central resize x resize patch, as uint8."""
    return v2.Compose([v2.PILToTensor(), v2.Resize(resize, antialias=True), v2.CenterCrop(resize)])


def folder_split(
    train: bool,
    cfg: DataConfig,
    batch_size: int,
    seed: int,
    limit: int | None = None,
    ordered: bool = False,
    d: Dist = Dist(),
    strict: bool = False,
) -> Split:
    root = Path(cfg.name)
    split_dir = root / ("train" if train else "val")
    if not split_dir.is_dir():
        raise UserError(f"{split_dir}: no such directory (expected {root}/train/<class>/* and {root}/val/<class>/*)")
    # training images are only ever seen at `resize`; validation decodes every pixel, as
    # torchvision does, so that evaluation matches torchvision's preprocessing
    load = functools.partial(load_image, channels=cfg.channels, draft=cfg.resize if train else None)
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
    batches = ShardedBatches(len(ds), batch_size, d, shuffle=train and not ordered, seed=seed)
    loader = FolderLoader(ds, batches, cfg.workers, strict)
    digest = hashlib.sha1("\n".join(os.path.relpath(p, split_dir) for p in paths).encode()).hexdigest()
    return Split(loader, classes, len(ds), fingerprint=f"{len(paths)}-{digest[:16]}")


def load_split(
    train: bool, cfg: DataConfig, batch_size: int, seed: int = 0, ordered: bool = False, d: Dist = Dist()
) -> Split:
    """This process's share of the training (train=True) or validation/test split, as the
    config says: its limit_train or limit_val images (a fixed subset), and for the
    training split its strictness (cfg.strict: an unreadable file stops the run instead of
    being skipped and listed).

    batch_size is the global batch (split over the processes of `d`). The training split
    is shuffled from (seed, epoch) and drops its last partial batch, unless `ordered`:
    every image once in file order, for statistics and the fc7 index. See ShardedBatches.
    """
    limit, strict = (cfg.limit_train, cfg.strict) if train else (cfg.limit_val, False)
    if is_fashion_mnist(cfg):
        return fashion_mnist_split(train, cfg, batch_size, seed, limit, ordered, d)
    if is_packed(cfg.name):
        if limit:
            raise UserError(f"{cfg.name}: --limit is not supported for a packed store")
        return packed_split(
            train, cfg, lambda n: ShardedBatches(n, batch_size, d, shuffle=train and not ordered, seed=seed)
        )
    return folder_split(train, cfg, batch_size, seed, limit, ordered, d, strict)


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
        img = Image.fromarray(ds.data[i].numpy(), mode="L")
        atomic_write(path, lambda tmp, img=img: img.save(tmp, format="PNG"))
        paths.append(path)
    return paths

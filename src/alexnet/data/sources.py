"""What `alexnet pack` reads: every image of a dataset as it was downloaded, in a fixed order.

Two kinds of source, told apart by what the folder SRC holds:

- ImageNet's official downloads, side by side as downloaded: ILSVRC2012_img_train.tar (a
  tar of 1,000 per-class tars, n01440764.tar ...), ILSVRC2012_img_val.tar (50,000 flat
  JPEGs) and ILSVRC2012_devkit_t12.tar.gz (the validation ground truth, one
  ILSVRC2012_ID per image, and data/meta.mat, which maps those IDs to wnids; its IDs are
  not the sorted-wnid order, and it lists non-leaf synsets too). Nothing is extracted:
  the two image tars are indexed once by their headers (512 bytes a member, read with
  seeks), and each image is then read from its offset in the uncompressed tar.
- An ImageNet-style folder (train/<class>/*, val/<class>/* or a flat val/ with its ground
  truth, as `--data` reads it: imagenet.py).

Classes are in sorted-wnid (folder-name) order, the order of torchvision's ImageFolder and
of the usual ImageNet loaders, so class indices match torchvision's weights; within a
class the images are in name order, and the flat validation files in file-name order.

The per-image fields are numpy arrays (names as bytes, offsets, sizes, labels), not Python
lists of 1.28M objects, so the worker processes that decode them share them untouched
instead of copying every page they touch (reference counts write to the objects).
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets

from ..run.errors import UserError
from .imagenet import GROUND_TRUTH, WNID, FlatFolder, read_meta_mat, val_labels

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
OFFICIAL = (TRAIN_TAR, VAL_TAR, DEVKIT)
SPLITS = ("train", "val")


@dataclass
class SourceSplit:
    """The images of one split: their names, labels and where their bytes are.

    names: the path under `root` (a folder), or `<wnid>/<member>` / `<member>` for an
    image inside the tar `root`; offsets and sizes: where its bytes are in that tar (None
    for files)."""

    root: Path
    names: np.ndarray  # bytes ("S"), UTF-8
    labels: np.ndarray  # int64 class indices
    offsets: np.ndarray | None = None  # int64
    sizes: np.ndarray | None = None  # int64

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, i: int) -> str:
        return self.names[i].decode()

    def where(self, i: int) -> str:
        """The image as a person finds it: the file, or ARCHIVE:member."""
        return str(self.root / self.name(i)) if self.offsets is None else f"{self.root}:{self.name(i)}"

    def read(self, i: int) -> bytes:
        """The image file's bytes (OSError if they cannot be read)."""
        if self.offsets is None:
            return (self.root / self.name(i)).read_bytes()
        with open(self.root, "rb") as f:
            f.seek(int(self.offsets[i]))
            data = f.read(int(self.sizes[i]))
        if len(data) != self.sizes[i]:
            raise OSError(f"the archive ends after {len(data)} of the member's {self.sizes[i]} bytes")
        return data

    def subset(self, keep: np.ndarray) -> SourceSplit:
        pick = lambda a: None if a is None else a[keep]  # noqa: E731
        return SourceSplit(self.root, self.names[keep], self.labels[keep], pick(self.offsets), pick(self.sizes))


@dataclass
class Sources:
    kind: str  # "imagenet-archives" or "folder"
    root: Path  # SRC as given
    classes: list[str]  # wnids (or folder names), sorted
    class_names: list[str] | None  # readable names where the source has them (meta.mat)
    splits: dict[str, SourceSplit]


def find_sources(src: Path, val_labels_file: str | None = None, synsets_file: str | None = None) -> Sources:
    """The official downloads in SRC (found by their names), else an ImageNet-style folder."""
    if not src.is_dir():
        raise UserError(f"{src}: no such directory")
    present = [n for n in OFFICIAL if (src / n).is_file()]
    if present:
        missing = [n for n in OFFICIAL if n not in present]
        if missing:
            raise UserError(f"{src}: has {', '.join(present)} but not {', '.join(missing)} (all three are needed)")
        return _archives(src)
    if (src / "train").is_dir():
        return _folder(src, val_labels_file, synsets_file)
    raise UserError(
        f"{src}: neither ImageNet's downloads ({', '.join(OFFICIAL)}) nor an image folder (train/<class>/*, val/...)"
    )


# ----------------------------------------------------------------------------- the official files


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:")  # uncompressed, seekable: headers only, no data read
    except (tarfile.TarError, OSError) as e:
        raise UserError(f"{path}: not an uncompressed tar archive ({e})") from e


def _index_train(path: Path) -> tuple[list[str], list[tuple[str, int, int]], list[int]]:
    """(classes, [(name, offset, size)], labels) of the tar of per-class tars."""
    per_class: dict[str, list[tuple[str, int, int]]] = {}
    with _open_tar(path) as outer:
        for member in outer:
            if not member.isfile():
                continue
            stem = member.name.rsplit("/", 1)[-1]
            wnid = stem.removesuffix(".tar")
            if not (stem.endswith(".tar") and WNID.match(wnid)):
                raise UserError(f"{path}: {member.name} is not a per-class tar (n01440764.tar ...)")
            try:
                inner = tarfile.open(fileobj=outer.extractfile(member), mode="r:")
                per_class[wnid] = sorted(
                    (f"{wnid}/{m.name.rsplit('/', 1)[-1]}", member.offset_data + m.offset_data, m.size)
                    for m in inner
                    if m.isfile()
                )
            except tarfile.TarError as e:
                raise UserError(f"{path}: {member.name} is not a readable tar ({e})") from e
    classes = sorted(per_class)
    if not classes:
        raise UserError(f"{path}: holds no per-class tars")
    items = [item for c in classes for item in per_class[c]]
    labels = [k for k, c in enumerate(classes) for _ in per_class[c]]
    return classes, items, labels


def _devkit(path: Path) -> tuple[list[int], dict[int, str], dict[str, str]]:
    """(ground-truth ILSVRC2012_IDs in file order, ID -> wnid, wnid -> name) from the devkit."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            found = {m.name.rsplit("/", 1)[-1]: m for m in tar if m.isfile()}
            if GROUND_TRUTH not in found or "meta.mat" not in found:
                raise UserError(f"{path}: no data/{GROUND_TRUTH} or data/meta.mat inside (not the devkit?)")
            truth = tar.extractfile(found[GROUND_TRUTH]).read().decode()
            meta = io.BytesIO(tar.extractfile(found["meta.mat"]).read())
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"{path}: not a readable tar.gz ({e})") from e
    ids, names = read_meta_mat(meta, f"{path}:meta.mat")
    try:
        truth_ids = [int(v) for v in truth.split()]
    except ValueError as e:
        raise UserError(f"{path}: {GROUND_TRUTH} is not a list of ILSVRC2012_IDs ({e})") from e
    return truth_ids, ids, names


def _index_val(path: Path, devkit: Path, classes: list[str]) -> tuple[list[tuple[str, int, int]], list[int]]:
    """The flat validation tar's images in file-name order, labelled through the devkit."""
    truth, id_to_wnid, _ = _devkit(devkit)
    index = {c: k for k, c in enumerate(classes)}
    with _open_tar(path) as tar:
        members = sorted((m.name.rsplit("/", 1)[-1], m.offset_data, m.size) for m in tar if m.isfile())
    items, labels = [], []
    for name, offset, size in members:
        try:  # ILSVRC2012_val_00000001.JPEG is the first line of the ground truth
            number = int(name.split("_")[-1].split(".")[0])
            wnid = id_to_wnid[truth[number - 1]]
        except (ValueError, IndexError, KeyError) as e:
            raise UserError(f"{path}: {name} has no label in {devkit} ({e})") from e
        if wnid not in index:
            raise UserError(f"{path}: {name} is of {wnid}, which {TRAIN_TAR} does not have")
        items.append((name, offset, size))
        labels.append(index[wnid])
    return items, labels


def _split(root: Path, items: list[tuple[str, int, int]], labels: list[int]) -> SourceSplit:
    names, offsets, sizes = zip(*items) if items else ((), (), ())
    return SourceSplit(
        root,
        np.array([n.encode() for n in names], dtype=bytes),
        np.array(labels, dtype=np.int64),
        np.array(offsets, dtype=np.int64),
        np.array(sizes, dtype=np.int64),
    )


def _archives(src: Path) -> Sources:
    classes, train_items, train_labels = _index_train(src / TRAIN_TAR)
    val_items, val_labels_ = _index_val(src / VAL_TAR, src / DEVKIT, classes)
    names = _devkit(src / DEVKIT)[2]
    return Sources(
        "imagenet-archives",
        src,
        classes,
        [names.get(c, c) for c in classes],
        {
            "train": _split(src / TRAIN_TAR, train_items, train_labels),
            "val": _split(src / VAL_TAR, val_items, val_labels_),
        },
    )


# ----------------------------------------------------------------------------- a folder


def class_folder(folder: Path, base: Path, classes: list[str] | None = None) -> tuple[list[str], SourceSplit]:
    """FOLDER/<class>/* (ImageFolder's classes and order), with names relative to `base`;
    `classes`: the classes it must have (a validation folder's must be training's)."""
    try:
        found, index = datasets.folder.find_classes(str(folder))
        if classes is not None and found != classes:
            raise UserError(f"{folder}: its classes differ from the training classes")
        pairs = datasets.folder.make_dataset(str(folder), index, datasets.folder.IMG_EXTENSIONS)
    except (FileNotFoundError, OSError) as e:
        raise UserError(f"{folder}: {e}") from e
    names = np.array([str(Path(p).relative_to(base)).encode() for p, _ in pairs], dtype=bytes)
    return found, SourceSplit(base, names, np.array([y for _, y in pairs], dtype=np.int64))


def _folder(src: Path, val_labels_file: str | None, synsets_file: str | None) -> Sources:
    classes, train = class_folder(src / "train", src)
    val_dir = src / "val"
    if not val_dir.is_dir():
        raise UserError(f"{val_dir}: no such directory")
    if any(e.is_dir() for e in val_dir.iterdir()):
        val = class_folder(val_dir, src, classes)[1]
    else:  # ILSVRC's flat val/ with its ground truth (imagenet.val_labels)
        labels = val_labels(src, val_labels_file, synsets_file)
        try:
            pairs = FlatFolder(val_dir, labels, classes, loader=lambda p: p).samples
        except OSError as e:
            raise UserError(f"{val_dir}: {e}") from e
        names = np.array([str(Path(p).relative_to(src)).encode() for p, _ in pairs], dtype=bytes)
        val = SourceSplit(src, names, np.array([y for _, y in pairs], dtype=np.int64))
    return Sources("folder", src, classes, None, {"train": train, "val": val})


def limited(split: SourceSplit, limit: int | None) -> SourceSplit:
    """A fixed random subset of `limit` images, in source order: the subset `--limit` takes
    of a folder (data.folder_split), so every class can appear in it."""
    if not limit or limit >= len(split):
        return split
    keep = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))[:limit].sort().values
    return split.subset(keep.numpy())

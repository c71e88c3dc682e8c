"""ImageNet as users have it: the flat official validation folder with its ground truth,
and human-readable names for WordNet ids.

Validation layouts (DATA/val/):
- `val/<wnid>/*.JPEG` (what most scripts produce): read by ImageFolder.
- flat `val/ILSVRC2012_val_00000001.JPEG ...` plus one of
  - Kaggle's `LOC_val_solution.csv` (ImageId,PredictionString "wnid x y x y ..."), or
  - the devkit's `ILSVRC2012_validation_ground_truth.txt` (one ILSVRC2012_ID per line, in
    file-name order) with the synset order that maps IDs to wnids: the devkit's
    `data/meta.mat` (needs scipy) or a text file with one wnid per line in ID order.
  Looked for in DATA and DATA/ILSVRC2012_devkit_t12/data unless given.

Class names: torchvision ships the 1000 ImageNet category names with its weights
metadata, in the standard class order (sorted wnids), so a training folder holding the
1000 ILSVRC-2012 wnids gets names without a network or another package; the devkit's
meta.mat, when present, names any subset. Otherwise the folder names are the names.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from torchvision import datasets

from ..run.errors import UserError

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from PIL import Image

WNID = re.compile(r"^n\d{8}$")
LOC_CSV = "LOC_val_solution.csv"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_DATA = Path("ILSVRC2012_devkit_t12") / "data"


def _find(root: Path, name: str) -> Path | None:
    for folder in (root, root / DEVKIT_DATA):
        if (folder / name).is_file():
            return folder / name
    return None


def read_meta_mat(path: Path | BinaryIO, name: str | None = None) -> tuple[dict[int, str], dict[str, str]]:
    """(ILSVRC2012_ID -> wnid, wnid -> first name) of the 1000 leaf synsets of meta.mat (a
    path, or a file object named `name`: the member of the devkit's tar.gz)."""
    name = name or str(path)
    try:
        import scipy.io
    except ImportError as e:
        raise UserError(f"{name}: reading the devkit's meta.mat needs scipy (pip install scipy)") from e
    try:
        synsets = scipy.io.loadmat(path if not isinstance(path, Path) else str(path), squeeze_me=True)["synsets"]
        leaves = [s for s in synsets if int(s["num_children"]) == 0]
        ids = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in leaves}
        names = {str(s["WNID"]): str(s["words"]).split(", ")[0] for s in leaves}
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise UserError(f"{name}: not the devkit's meta.mat ({e})") from e
    return ids, names


def _id_order(path: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid from meta.mat or a text file of wnids in ID order."""
    if path.suffix == ".mat":
        return read_meta_mat(path)[0]
    wnids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not all(WNID.match(w) for w in wnids):
        raise UserError(f"{path}: expected one wnid (n01440764 ...) per line, in ILSVRC2012_ID order")
    return {i + 1: w for i, w in enumerate(wnids)}


def val_labels(root: Path, labels_file: str | None = None, synsets_file: str | None = None) -> dict[str, str]:
    """File name -> wnid for the flat validation folder of ImageNet-style data at `root`."""
    path = Path(labels_file) if labels_file else (_find(root, LOC_CSV) or _find(root, GROUND_TRUTH))
    if path is None or not path.is_file():
        raise UserError(
            f"{root / 'val'}: a flat validation folder needs its labels: {LOC_CSV} or "
            f"{GROUND_TRUTH} (+ meta.mat) in {root}, or --val-labels FILE"
        )
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        try:
            return {f"{r['ImageId']}.JPEG": r["PredictionString"].split()[0] for r in rows}
        except (KeyError, IndexError) as e:
            raise UserError(f"{path}: expected the columns ImageId,PredictionString") from e
    order_path = Path(synsets_file) if synsets_file else _find(root, "meta.mat")
    if order_path is None:
        raise UserError(
            f"{path}: ILSVRC2012_IDs need the synset order: the devkit's meta.mat in the data folder, or --synsets FILE"
        )
    order = _id_order(order_path)
    try:
        ids = [int(line) for line in path.read_text().split()]
        return {f"ILSVRC2012_val_{i + 1:08d}.JPEG": order[n] for i, n in enumerate(ids)}
    except (ValueError, KeyError) as e:
        raise UserError(f"{path}: not a list of ILSVRC2012_IDs known to {order_path} ({e})") from e


class FlatFolder(datasets.DatasetFolder):
    """A folder of images whose classes come from a name -> class mapping, not subfolders."""

    def __init__(
        self,
        root: str | Path,
        labels: dict[str, str],
        classes: list[str],
        loader: Callable[[str], Image.Image],
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
    ) -> None:
        self._labels, self._classes = labels, classes
        super().__init__(str(root), loader, extensions=datasets.folder.IMG_EXTENSIONS, transform=transform)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        return self._classes, {c: i for i, c in enumerate(self._classes)}

    def make_dataset(
        self,
        directory: str | Path,
        class_to_idx: dict[str, int],
        extensions: tuple[str, ...] | None = None,
        is_valid_file: Callable[[str], bool] | None = None,
        allow_empty: bool = False,
    ) -> list[tuple[str, int]]:
        unknown = sorted({w for w in self._labels.values()} - set(class_to_idx))
        present = [n for n in sorted(os.listdir(directory)) if n in self._labels]
        samples = [
            (os.path.join(directory, n), class_to_idx[self._labels[n]])
            for n in present
            if self._labels[n] in class_to_idx
        ]
        if not samples:
            raise UserError(
                f"{directory}: none of its files has a label of a training class"
                + (f" (labels name {len(unknown)} classes not in train/)" if unknown else "")
            )
        return samples


def human_names(classes: list[str], root: Path, synsets_file: str | None = None) -> list[str] | None:
    """Readable names for wnid classes (see the module docstring), or None."""
    if not classes or not all(WNID.match(c) for c in classes):
        return None
    meta = Path(synsets_file) if synsets_file and synsets_file.endswith(".mat") else _find(root, "meta.mat")
    if meta is not None:
        names = read_meta_mat(meta)[1]
        return [names.get(c, c) for c in classes]
    if len(classes) == 1000 and classes == sorted(classes):
        return imagenet_categories()
    return None


def imagenet_categories() -> list[str]:
    """The 1000 ILSVRC-2012 class names in wnid order, from torchvision's local metadata."""
    from torchvision.models import AlexNet_Weights

    return list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])

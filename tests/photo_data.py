"""A user's own small folder of real photos, built from scikit-image's photos (no download).

Used by the tests (conftest.photo_folder) and by benchmarks/folder_default.py, which
measure how the image-folder default trains on real photos.
"""

from __future__ import annotations

from pathlib import Path


def make_photo_folder(root: Path, train_per_class: int = 8, val_per_class: int = 3) -> Path:
    """ROOT/train/<class>/ and ROOT/val/<class>/ for 3 classes (cat, rocket, coffee): crops of
    one photo per class at different sizes (odd ones among them), every other one mirrored,
    some grayscale or CMYK JPEGs and a PNG."""
    from PIL import Image, ImageOps
    from skimage import data as skdata

    classes = {"cat": skdata.chelsea(), "rocket": skdata.rocket(), "coffee": skdata.coffee()}
    n = train_per_class + val_per_class
    for name, arr in classes.items():
        img = Image.fromarray(arr)
        w, h = img.size
        for i in range(n):
            j = i % 11  # crops repeat after 11, mirrored differently
            crop = img.crop((j * 7, j * 5, w - (10 - j) * 4, h - (j % 4) * 9))
            crop = crop.resize((180 + 29 * j + i // 11, 150 + 17 * ((j * 3) % 7)))
            crop = ImageOps.mirror(crop) if (i + i // 11) % 2 else crop
            split, k = ("train", i) if i < train_per_class else ("val", i - train_per_class)
            d = Path(root) / split / name
            d.mkdir(parents=True, exist_ok=True)
            mode = {1: "L", 5: "CMYK"}.get(j, "RGB")
            if j == 3:
                crop.save(d / f"{name}{k}.png")
            else:
                crop.convert(mode).save(d / f"{name}{k}.jpg", quality=90)
    return Path(root)

import os
from pathlib import Path

import pytest

from alexnet.apps.cli import main

FASHION_MNIST_DIR = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """Decompressed datasets go to a per-session cache, not the user's."""
    os.environ["ALEXNET_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def cli(capsys):
    """`alexnet ARGV...` in this process: cli(*argv) -> (exit status, stdout, stderr).
    Arguments may be paths or numbers; the output is what the command itself printed."""

    def run(*argv):
        rc = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def _one_line_error(rc, err, *needles) -> str:
    """A refusal: exit status 2, stderr exactly one line `alexnet: error: ...` that names
    every needle, and no traceback. Returns that line."""
    assert "Traceback" not in err, err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("alexnet: error: "), err
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def one_line_error():
    """one_line_error(rc, err, *needles) -> the line: see _one_line_error."""
    return _one_line_error


@pytest.fixture(scope="session")
def fashion_dir() -> str:
    if not Path(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(
            f"Fashion-MNIST not found in {FASHION_MNIST_DIR}: run `make data` "
            "(apt-get install -y dataset-fashion-mnist) or set FASHION_MNIST_DIR"
        )
    return FASHION_MNIST_DIR


@pytest.fixture(scope="session")
def fashion_run(tmp_path_factory, fashion_dir) -> Path:
    """A small model trained for two short epochs on a slice of Fashion-MNIST via the CLI."""
    out = tmp_path_factory.mktemp("fashion-run")
    rc = main(
        [
            "train",
            "--data-dir",
            fashion_dir,
            "--epochs",
            "2",
            "--limit-train",
            "4000",
            "--limit-val",
            "500",
            "--width",
            "0.5",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict:
    """Real photos from scikit-image's wheel in several sizes and modes."""
    import numpy as np
    from PIL import Image
    from skimage import data as skdata

    out = tmp_path_factory.mktemp("photos")
    files = {}

    def save(name, img, **kw):
        files[name] = out / name
        img.save(files[name], **kw)

    save("astronaut.jpg", Image.fromarray(skdata.astronaut()))  # 512x512 RGB
    save("coffee.png", Image.fromarray(skdata.coffee()))  # 400x600 RGB
    save("camera_gray.png", Image.fromarray(skdata.camera()))  # 512x512 L
    cat = Image.fromarray(skdata.chelsea())  # 300x451 RGB
    save("chelsea_cmyk.jpg", cat.convert("CMYK"))
    save("chelsea_rgba.png", cat.convert("RGBA"))
    save("chelsea_palette.png", cat.convert("P"))
    save("chelsea_small.jpg", cat.resize((37, 25)))
    save("tiny.png", Image.fromarray(np.array([[[200, 10, 10]]], dtype=np.uint8)))  # 1x1
    gray16 = skdata.camera().astype(np.uint16) * 257
    save("camera_16bit.png", Image.fromarray(gray16))
    return files


WNIDS = {"n02123045": "tabby", "n04266014": "space shuttle", "n07920052": "espresso"}


@pytest.fixture(scope="session")
def imagenet(tmp_path_factory) -> Path:
    """A tiny ImageNet in the official layouts, from scikit-image's real photos.

    ROOT/train/<wnid>/*.JPEG (RGB, grayscale and CMYK JPEGs, a PNG named .JPEG, several
    sizes), ROOT/val/<wnid>/*.JPEG, and the same validation images flat in
    ROOT/val_flat/ILSVRC2012_val_0000000N.JPEG with LOC_val_solution.csv, the devkit's
    ILSVRC2012_validation_ground_truth.txt and a meta.mat.
    """
    import numpy as np
    import scipy.io
    from PIL import Image
    from skimage import data as skdata

    root = tmp_path_factory.mktemp("imagenet")
    photos = {"n02123045": skdata.chelsea(), "n04266014": skdata.rocket(), "n07920052": skdata.coffee()}
    modes = ["RGB", "L", "CMYK", "PNG"]
    val_rows, val_ids = [], []
    ids = {w: i + 1 for i, w in enumerate(reversed(sorted(WNIDS)))}  # ID order != sorted order
    k = 0
    for wnid, arr in photos.items():
        img = Image.fromarray(arr)
        w, h = img.size
        for i in range(6):
            crop = img.crop((i * 9, i * 6, w - i * 5, h - i * 7)).resize((280 + 37 * i, 260 + 23 * (5 - i)))
            split = "train" if i < 4 else "val"
            d = root / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            mode = modes[i % 4] if split == "train" else "RGB"
            path = d / f"{wnid}_{i}.JPEG"
            if mode == "PNG":
                crop.save(path, format="PNG")  # a PNG disguised as JPEG, as in ImageNet
            else:
                crop.convert(mode).save(path, format="JPEG", quality=90)
            if split == "val":
                k += 1
                flat = root / "val_flat"
                flat.mkdir(exist_ok=True)
                name = f"ILSVRC2012_val_{k:08d}"
                crop.save(flat / f"{name}.JPEG", format="JPEG", quality=90)
                val_rows.append(f"{name},{wnid} 1 2 3 4")
                val_ids.append(ids[wnid])
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(val_rows) + "\n")
    devkit = root / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(map(str, val_ids)) + "\n")
    synsets = np.array(
        [(ids[w], w, f"{WNIDS[w]}, more words", "gloss", 0) for w in WNIDS]
        + [(1001, "n00001740", "entity", "gloss", 3)],
        dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"), ("num_children", "O")],
    )
    scipy.io.savemat(devkit / "meta.mat", {"synsets": synsets})
    return root


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> Path:
    """A user's own small folder of real photos (photo_data.make_photo_folder): 3 classes,
    8 training and 3 validation images each, some grayscale or CMYK, a PNG, odd sizes."""
    from photo_data import make_photo_folder

    return make_photo_folder(tmp_path_factory.mktemp("photo-folder"))


@pytest.fixture(scope="session")
def photo_folder_96(tmp_path_factory) -> Path:
    """The same photos, 32 training images a class (96): 3 steps an epoch at batch 32."""
    from photo_data import make_photo_folder

    return make_photo_folder(tmp_path_factory.mktemp("photo-folder-96"), train_per_class=32)


@pytest.fixture
def lrn_kernel():
    """lrn_kernel("fused" | "torch" | "auto"): lrn.select_kernel's choice (for a layer's
    `kernel`). "fused" needs a C compiler: without one the test skips, unless
    ALEXNET_NATIVE_TESTS=required (CI, which installs gcc), where it fails."""
    from alexnet.core import lrn
    from alexnet.run import native

    def use(kernel: str) -> str:
        if kernel == "fused" and native.library() is None:
            reason = f"the fused LRN kernel: {native.kernel_status()}"
            if os.environ.get("ALEXNET_NATIVE_TESTS") == "required":
                pytest.fail(f"{reason} (ALEXNET_NATIVE_TESTS=required)")
            pytest.skip(reason)
        return lrn.select_kernel(kernel)[0]

    return use


@pytest.fixture(scope="session")
def imagenet_downloads(imagenet, tmp_path_factory) -> Path:
    """The `imagenet` miniature as ImageNet's three downloads, in their exact layout:
    ILSVRC2012_img_train.tar (a tar of per-class tars <wnid>.tar of <wnid>_N.JPEG, with a
    truncated JPEG added to one class), ILSVRC2012_img_val.tar (the flat validation JPEGs)
    and ILSVRC2012_devkit_t12.tar.gz (ILSVRC2012_devkit_t12/data/ with the ground truth and
    a meta.mat whose IDs are not in sorted-wnid order and which lists a non-leaf synset)."""
    import io
    import tarfile

    root = tmp_path_factory.mktemp("downloads")
    with tarfile.open(root / "ILSVRC2012_img_train.tar", "w") as outer:
        for wnid_dir in sorted((imagenet / "train").iterdir(), reverse=True):  # not in sorted order
            inner_bytes = io.BytesIO()
            with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
                for f in sorted(wnid_dir.iterdir()):
                    inner.add(f, arcname=f.name)
                if wnid_dir.name == "n04266014":
                    whole = next(iter(sorted(wnid_dir.glob("*_0.JPEG")))).read_bytes()
                    info = tarfile.TarInfo(f"{wnid_dir.name}_9.JPEG")
                    info.size = len(whole) // 2
                    inner.addfile(info, io.BytesIO(whole[: info.size]))  # truncated
            info = tarfile.TarInfo(f"{wnid_dir.name}.tar")
            info.size = inner_bytes.tell()
            inner_bytes.seek(0)
            outer.addfile(info, inner_bytes)
    with tarfile.open(root / "ILSVRC2012_img_val.tar", "w") as tar:
        for f in sorted((imagenet / "val_flat").iterdir()):
            tar.add(f, arcname=f.name)
    with tarfile.open(root / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        tar.add(imagenet / "ILSVRC2012_devkit_t12", arcname="ILSVRC2012_devkit_t12")
    return root

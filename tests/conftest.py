import os
from pathlib import Path

import pytest

from alexnet.cli import main

FASHION_MNIST_DIR = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """Decompressed datasets go to a per-session cache, not the user's."""
    os.environ["ALEXNET_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def fashion_dir() -> str:
    if not Path(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"Fashion-MNIST not found in {FASHION_MNIST_DIR}: run `make data` "
                    "(apt-get install -y dataset-fashion-mnist) or set FASHION_MNIST_DIR")
    return FASHION_MNIST_DIR


@pytest.fixture(scope="session")
def fashion_run(tmp_path_factory, fashion_dir) -> Path:
    """A small model trained for two short epochs on a slice of Fashion-MNIST via the CLI."""
    out = tmp_path_factory.mktemp("fashion-run")
    rc = main(["train", "--data-dir", fashion_dir, "--epochs", "2", "--limit-train", "4000",
               "--limit-val", "500", "--width", "0.5", "--out", str(out)])
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

    save("astronaut.jpg", Image.fromarray(skdata.astronaut()))                          # 512x512 RGB
    save("coffee.png", Image.fromarray(skdata.coffee()))                                # 400x600 RGB
    save("camera_gray.png", Image.fromarray(skdata.camera()))                           # 512x512 L
    cat = Image.fromarray(skdata.chelsea())                                             # 300x451 RGB
    save("chelsea_cmyk.jpg", cat.convert("CMYK"))
    save("chelsea_rgba.png", cat.convert("RGBA"))
    save("chelsea_palette.png", cat.convert("P"))
    save("chelsea_small.jpg", cat.resize((37, 25)))
    save("tiny.png", Image.fromarray(np.array([[[200, 10, 10]]], dtype=np.uint8)))      # 1x1
    gray16 = (skdata.camera().astype(np.uint16) * 257)
    save("camera_16bit.png", Image.fromarray(gray16))
    return files

"""Does the JPEG store's rounding change what the network learns? A short training on a
raw store against the same images in a JPEG store, several seeds each.

    python benchmarks/store_training.py [--train 20000] [--val 5000] [--epochs 3] [--seeds 0 1]

The images are Fashion-MNIST's (Debian's package, no download), written as an image folder
of RGB PNGs, packed at --resize 32 as raw and as JPEG, and trained as the Fashion-MNIST
recipe trains (the `small` model, He init, inputs divided by their std, onecycle), on 28x28
crops of the 32x32 store images, with the same seeds; only the store differs. Printed:
validation top-1 of every run, the mean of each store and the spread between seeds, with
the CPU model and torch version. Paste into docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from alexnet.config import DataConfig  # noqa: E402
from alexnet.core.recipes import resolve  # noqa: E402
from alexnet.core.train import train as run  # noqa: E402
from alexnet.data.datasets import fashion_mnist  # noqa: E402
from alexnet.data.fashion import FASHION_MNIST_MEAN, FASHION_MNIST_STD  # noqa: E402
from alexnet.data.pack import pack  # noqa: E402
from pipeline import cpu_model  # noqa: E402

# the Fashion-MNIST recipe's model, optimiser and input scaling (recipes.py: "fashion-mnist"),
# on 28x28 crops of the 32x32 store images
MODEL = {"name": "small", "init": "kaiming", "width": 0.75, "dropout": 0.25, "input_size": 28}
DATA = {
    "resize": 32, "mean": (FASHION_MNIST_MEAN[0],) * 3, "std": (FASHION_MNIST_STD[0],) * 3, "mean_image": False,
    "lighting": 0.0, "translate": 0, "workers": 1,
}  # fmt: skip
TRAIN = {
    "batch_size": 96, "lr": 0.06, "schedule": "onecycle", "warmup_epochs": 0.5, "label_smoothing": 0.1,
    "amp": "off", "budget": None, "eval_mirror": True,
}  # fmt: skip


def write_folder(root: Path, train: int, val: int, data_dir: str | None) -> Path:
    from PIL import Image

    for split, n, is_train in (("train", train, True), ("val", val, False)):
        ds = fashion_mnist(is_train, DataConfig(data_dir=data_dir))
        for i in range(n):
            d = root / split / f"c{int(ds.targets[i])}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ds.data[i].numpy(), mode="L").convert("RGB").save(d / f"{i:05d}.png")
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=20_000)
    p.add_argument("--val", type=int, default=5_000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--data-dir", help="Fashion-MNIST's folder (default: Debian's package)")
    args = p.parse_args()
    print(f"CPU: {cpu_model()}; torch {torch.__version__}")
    print(f"command: python {' '.join(sys.argv)}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = write_folder(root / "folder", args.train, args.val, args.data_dir)
        stores = {}
        for fmt in ("raw", "jpeg"):
            stores[fmt] = root / fmt
            pack(str(folder), str(stores[fmt]), resize=32, encoding=fmt, quality=args.quality, log=lambda *a: None)
        top1: dict[str, list[float]] = {fmt: [] for fmt in stores}
        for seed in args.seeds:
            for fmt, store in stores.items():
                started = time.perf_counter()
                train = {**TRAIN, "epochs": args.epochs, "seed": seed, "out": str(root / f"run-{fmt}-{seed}")}
                result = run(resolve(str(store), MODEL, DATA, train, recipe="fashion-mnist"))
                top1[fmt].append(result["val"]["top1"])
                took = time.perf_counter() - started
                print(f"{fmt:>4} seed {seed}: validation top-1 {top1[fmt][-1]:.4f} ({took:.0f} s)")
        print(f"\n{args.train:,} training and {args.val:,} validation images, {args.epochs} epochs, seeds {args.seeds}")
        for fmt, values in top1.items():
            spread = max(values) - min(values)
            print(f"  {fmt:>4}: mean top-1 {statistics.mean(values):.4f}, seeds spread {spread:.4f}")
        diff = statistics.mean(top1["jpeg"]) - statistics.mean(top1["raw"])
        print(f"  jpeg - raw: {diff:+.4f}")


if __name__ == "__main__":
    main()

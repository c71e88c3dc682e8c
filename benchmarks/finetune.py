"""Fine-tuning against training from scratch, on a small folder, offline.

    python benchmarks/finetune.py [--per-class 20] [--epochs 15] [--seeds 0 1] [--lrs 0.001 0.003 0.01]
                                  [--figure docs/figures/finetune.png]

Pretraining: the `small` model on five Fashion-MNIST classes (T-shirt, trouser, pullover,
dress, coat; --source-per-class images each, written as an RGB image folder), trained as
the Fashion-MNIST recipe trains. The small folder: the five other classes (sandal, shirt,
sneaker, bag, ankle boot) with --per-class training images each and 200 validation images
each. On it, for each seed: from scratch (the Fashion-MNIST recipe's model and optimiser,
and the folder recipe a newcomer gets), and `--init-from` the pretrained checkpoint under
`--recipe finetune` at each --lrs, every layer and with `--freeze features`. Printed:
validation top-1 after the last epoch of each run, and with --figure the curves
(validation top-1 per epoch, the mean over seeds). Paste into docs/FIDELITY.md.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from alexnet.config import DataConfig  # noqa: E402
from alexnet.core.recipes import resolve  # noqa: E402
from alexnet.core.train import train as run  # noqa: E402
from alexnet.data.datasets import fashion_mnist  # noqa: E402
from pipeline import cpu_model  # noqa: E402
from store_training import DATA as STORE_DATA  # noqa: E402
from store_training import MODEL  # noqa: E402
from store_training import TRAIN as STORE_TRAIN  # noqa: E402

SOURCE, TARGET = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
# the Fashion-MNIST recipe's model, optimiser and input scaling on 28x28 crops of 32x32
# images, as benchmarks/store_training.py trains; here every epoch is validated
DATA = {**STORE_DATA, "workers": 0}
TRAIN = {**STORE_TRAIN, "val_every": 1}


def write_folder(root: Path, classes: tuple[int, ...], per_class: int, val_per_class: int, data_dir: str | None):
    from PIL import Image

    for split, n, is_train in (("train", per_class, True), ("val", val_per_class, False)):
        ds = fashion_mnist(is_train, DataConfig(data_dir=data_dir))
        taken = dict.fromkeys(classes, 0)
        for i in range(len(ds)):
            y = int(ds.targets[i])
            if y in taken and taken[y] < n:
                d = root / split / f"{y}-{ds.classes[y].replace('/', '-').replace(' ', '_')}"
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(ds.data[i].numpy(), mode="L").convert("RGB").save(d / f"{i:05d}.png")
                taken[y] += 1
            if all(v >= n for v in taken.values()):
                break
    return root


def curve(out: Path) -> list[float]:
    with open(out / "metrics.csv", newline="") as f:
        return [float(r["val_top1"]) for r in csv.DictReader(f) if r["val_top1"]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source-per-class", type=int, default=2000)
    p.add_argument("--source-epochs", type=int, default=4)
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--val-per-class", type=int, default=200)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--lrs", type=float, nargs="+", default=[0.001, 0.003, 0.01])
    p.add_argument("--data-dir", help="Fashion-MNIST's folder (default: Debian's package)")
    p.add_argument("--figure", help="write the curves here (PNG)")
    p.add_argument("--no-scratch", action="store_true", help="only the fine-tuning runs")
    args = p.parse_args()
    print(f"CPU: {cpu_model()}")
    print(f"command: python {' '.join(sys.argv)}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = write_folder(root / "source", SOURCE, args.source_per_class, 200, args.data_dir)
        target = write_folder(root / "target", TARGET, args.per_class, args.val_per_class, args.data_dir)
        started = time.perf_counter()
        train = {**TRAIN, "epochs": args.source_epochs, "out": str(root / "pretrained")}
        result = run(resolve(str(source), MODEL, DATA, train, recipe="fashion-mnist"))
        ckpt = root / "pretrained" / "last.pt"
        took = time.perf_counter() - started
        print(f"pretrained on 5 classes: validation top-1 {result['val']['top1']:.4f} ({took:.0f} s)")
        arms: dict[str, dict] = {
            "from scratch (Fashion-MNIST recipe)": {
                "recipe": "fashion-mnist", "model": MODEL, "data": DATA, "train": TRAIN,
            },
            "from scratch (folder recipe, small)": {
                "recipe": "folder", "model": {"name": "small", "input_size": 28}, "data": {"workers": 0},
                "train": {"batch_size": 16, "amp": "off", "val_every": 1},
            },
        }  # fmt: skip
        if args.no_scratch:
            arms = {}
        for lr in args.lrs:
            for freeze in ("none", "features"):
                arms[f"--init-from, lr {lr:g}, freeze {freeze}"] = {
                    "recipe": "finetune",
                    "model": {},
                    "data": {"workers": 0},
                    "train": {"init_from": str(ckpt), "lr": lr, "freeze": freeze, "amp": "off"},
                }
        curves: dict[str, list[list[float]]] = {name: [] for name in arms}
        for name, arm in arms.items():
            for seed in args.seeds:
                out = root / f"run-{len(curves[name])}-{abs(hash(name))}"
                t = {**arm["train"], "epochs": args.epochs, "seed": seed, "out": str(out)}
                run(resolve(str(target), arm["model"], arm["data"], t, recipe=arm["recipe"]))
                curves[name].append(curve(out))
            finals = [c[-1] for c in curves[name]]
            print(f"{name:<44} top-1 {statistics.mean(finals):.4f} (seeds: {', '.join(f'{v:.4f}' for v in finals)})")
        if args.figure:
            draw(curves, args)


def draw(curves: dict[str, list[list[float]]], args: argparse.Namespace) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, runs in curves.items():
        mean = [statistics.mean(v) for v in zip(*runs)]
        ax.plot(range(1, len(mean) + 1), mean, label=name, linestyle="--" if "scratch" in name else "-")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1")
    ax.set_title(
        f"5 new Fashion-MNIST classes, {args.per_class} training images each (mean of {len(args.seeds)} seeds)"
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.figure, dpi=110)
    print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()

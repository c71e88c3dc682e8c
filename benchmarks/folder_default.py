"""Which default trains the `paper` model on a user's own folder, at any batch size?

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/folder_default.py [--batches 4 32] \
        [--epochs 8] [--json FILE] [--plot FILE]

Builds a folder of real photos (tests/photo_data.py: 3 classes, scikit-image's photos,
grayscale/CMYK/PNG/odd sizes among them), then trains each candidate recipe on it at
each batch size with `alexnet train` in this process (fp32, CPU, seed 0), recording every
step's training loss (benchmarks/health.py's recorder), and prints the mean training loss
of each epoch against ln C. Memorising a few dozen photos is learning: a candidate that
trains brings the loss well below ln 3 = 1.10 within a few epochs; one that does not stays
there or explodes. --plot draws the curves (docs/FIDELITY.md shows them).
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests")]

from alexnet.apps.cli import main  # noqa: E402
from alexnet.run.jsonio import write_json  # noqa: E402
from health import _Enough, record  # noqa: E402  (benchmarks/health.py)
from photo_data import make_photo_folder  # noqa: E402  (tests/photo_data.py)

PAPER_LR, PAPER_BATCH = 0.01, 128  # §5


def candidates(batch: int) -> dict[str, list[str]]:
    """Recipe options of each candidate at this batch size (on top of --recipe paper)."""
    scaled = f"{PAPER_LR * batch / PAPER_BATCH:.6g}"
    root = f"{PAPER_LR * math.sqrt(batch / PAPER_BATCH):.6g}"
    return {
        "paper (to the letter)": [],
        "paper, lr x batch/128": ["--lr", scaled],
        "caffe init": ["--init", "caffe"],
        "caffe init, lr x batch/128": ["--init", "caffe", "--lr", scaled],
        "caffe init, lr x sqrt(batch/128)": ["--init", "caffe", "--lr", root],
        # the folder recipe as it is now: the line above, and the plateau rule waits 300 steps
        "folder recipe (default)": ["--recipe", "folder"],
    }


def run(folder: Path, batch: int, epochs: int, options: list[str]) -> list[float]:
    """The training loss of every step (a run that raises, e.g. on divergence, ends early)."""
    losses = record(10**9)
    with tempfile.TemporaryDirectory() as out:
        try:
            main(
                [
                    "train",
                    "--data",
                    str(folder),
                    "--recipe",
                    "paper",
                    "--batch-size",
                    str(batch),
                    "--epochs",
                    str(epochs),
                    "--amp",
                    "off",
                    "--device",
                    "cpu",
                    "--workers",
                    "0",
                    "--flat-steps",
                    "1000000",
                    "--out",
                    out,
                    *options,
                ]
            )
        except _Enough:
            pass
    return list(losses)


def epoch_means(losses: list[float], steps_per_epoch: int) -> list[float]:
    return [
        sum(losses[i : i + steps_per_epoch]) / len(losses[i : i + steps_per_epoch])
        for i in range(0, len(losses), steps_per_epoch)
    ]


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in results.values()})
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for r in results.values():
            if r["batch"] == batch:
                means = [m if m is not None and math.isfinite(m) else float("nan") for m in r["epoch_means"]]
                ax.plot(range(1, len(means) + 1), means, "-o", label=r["candidate"], markersize=3)
        ax.axhline(math.log(3), color="gray", linestyle="--", linewidth=1, label="ln 3 (chance)")
        ax.set_yscale("log")
        ax.set_ylim(0.005, 100)
        ax.set_title(f"batch {batch}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean training loss")
        ax.legend(fontsize=7)
    fig.suptitle("paper model on 3 classes of real photos: which default trains")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main_(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[4, 32])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--train-per-class", type=int, default=32)
    p.add_argument("--only", nargs="+", help="run only these candidates (names as printed)")
    p.add_argument("--seed", type=int, default=0, help="the runs' --seed")
    p.add_argument("--json")
    p.add_argument("--plot")
    p.add_argument("--replot", nargs="+", metavar="JSON", help="only draw --plot from these --json files")
    args = p.parse_args(argv)
    if args.replot:
        import json

        results = {k: v for path in args.replot for k, v in json.loads(Path(path).read_text()).items()}
        return plot(results, args.plot)
    folder = make_photo_folder(Path(tempfile.mkdtemp()), args.train_per_class, 3)
    images = 3 * args.train_per_class
    print(f"# {' '.join(sys.argv)}")
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {images} training photos, 3 classes, ln 3 = {math.log(3):.3f}"
    )
    results = {}
    for batch in args.batches:
        steps = images // batch
        for name, options in candidates(batch).items():
            if args.only and name not in args.only:
                continue
            started = time.perf_counter()
            losses = run(folder, batch, args.epochs, [*options, "--seed", str(args.seed)])
            means = epoch_means(losses, steps)
            results[f"{name} @ {batch}"] = {
                "candidate": name,
                "batch": batch,
                "options": options,
                "losses": losses,
                "epoch_means": means,
            }
            print(
                f"batch {batch:3d}  {name:<34} "
                + " ".join(f"{m:9.3g}" for m in means)
                + f"   ({len(losses)} steps, {time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    if args.json:
        write_json(args.json, results)
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main_(sys.argv[1:])

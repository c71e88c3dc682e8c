"""Does the image-folder default learn from a small folder? Candidates for it, several seeds.

    python benchmarks/small_folder.py [--cases photos24 photos96 fashion100] [--seeds 0 1]
                                      [--only NAME ...] [--json FILE]

Cases (all offline): `photos24`, the `paper` model on 24 real photos in 3 classes
(tests/photo_data.py) at batch 4 for 10 epochs, the issue's case; `photos96`, 96 photos at
batch 32 for 10 epochs; `photos192`, 192 photos at batch 128 for 10 epochs; `fashion100`,
the `small` model (28x28) on 100 Fashion-MNIST images in 5 classes at batch 16 for 15
epochs. Each candidate is the folder recipe with some options changed (through the API:
the input std is no command-line option). Printed per case, candidate and seed: the mean
training loss of each epoch, the first epoch below 0.5 ln C, and the last validation top-1.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from alexnet.config import IMAGENET_STD  # noqa: E402
from alexnet.core.recipes import resolve  # noqa: E402
from alexnet.core.train import train as run  # noqa: E402
from alexnet.run.errors import UserError  # noqa: E402
from finetune import write_folder  # noqa: E402  (benchmarks/finetune.py)
from photo_data import make_photo_folder  # noqa: E402  (tests/photo_data.py)
from pipeline import cpu_model  # noqa: E402

STD = {"std": IMAGENET_STD}  # inputs divided by ImageNet's per-channel std (torchvision's)
CANDIDATES = {
    "folder recipe": ({}, {}, {}),
    "folder recipe before (plateau judges every epoch)": ({}, {}, {"plateau_min_steps": 0}),
    "+ He init, inputs / std": ({"init": "kaiming"}, STD, {}),
    "+ He init, inputs / std, lr x 3": ({"init": "kaiming"}, STD, {"lr_factor": 3}),
}
CASES = {  # name: (model, batch, epochs)
    "photos24": ({"name": "paper"}, 4, 10),
    "photos96": ({"name": "paper"}, 32, 10),
    "photos192": ({"name": "paper"}, 128, 10),
    "fashion100": ({"name": "small", "input_size": 28}, 16, 15),
}


def folder(case: str, root: Path) -> Path:
    if case == "fashion100":
        return write_folder(root / case, (5, 6, 7, 8, 9), 20, 100, None)
    return make_photo_folder(root / case, {"photos24": 8, "photos96": 32, "photos192": 64}[case], 3)


def one(data: Path, case: str, name: str, seed: int, out: Path) -> dict:
    model, batch, epochs = CASES[case]
    m, d, t = CANDIDATES[name]
    train = {"batch_size": batch, "epochs": epochs, "seed": seed, "amp": "off", "out": str(out)}
    train.update({k: v for k, v in t.items() if k != "lr_factor"})
    cfg = resolve(str(data), {**model, **m}, {"workers": 0, **d}, train, recipe="folder")
    if "lr_factor" in t:
        cfg = resolve(
            str(data), {**model, **m}, {"workers": 0, **d}, {**train, "lr": cfg.train.lr * t["lr_factor"]}, "folder"
        )
    try:
        run(cfg)
    except UserError as e:  # diverged: the epochs it completed are in metrics.csv
        print(f"  ({e})", flush=True)
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train_loss"]) for r in rows]
    classes = 5 if case == "fashion100" else 3
    below = next((i + 1 for i, v in enumerate(losses) if v < 0.5 * math.log(classes)), None)
    top1 = float(rows[-1]["val_top1"]) if rows and rows[-1]["val_top1"] else float("nan")
    return {"losses": losses, "below_half_ln_c": below, "val_top1": top1, "lr": cfg.train.lr}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=["photos24", "photos96", "fashion100"], choices=list(CASES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--only", nargs="+", help="candidates by name")
    p.add_argument("--json")
    args = p.parse_args()
    print(f"CPU: {cpu_model()}\ncommand: python {' '.join(sys.argv)}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for case in args.cases:
            data = folder(case, root)
            for name in CANDIDATES:
                if args.only and name not in args.only:
                    continue
                for seed in args.seeds:
                    r = one(data, case, name, seed, root / f"run-{case}-{len(results)}")
                    results.append({"case": case, "candidate": name, "seed": seed, **r})
                    print(
                        f"{case:<10} {name:<34} seed {seed}: lr {r['lr']:.4g}, loss by epoch "
                        + " ".join(f"{v:.3f}" for v in r["losses"])
                        + f"; below 0.5 ln C at epoch {r['below_half_ln_c']}; val top-1 {r['val_top1']:.3f}",
                        flush=True,
                    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

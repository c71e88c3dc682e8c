"""Top-1 agreement of the fast inference paths with fp32, on a checkpoint's test split.

    python benchmarks/agreement.py runs/fashion-mnist/best.pt [--limit N]

Prints each path's top-1 accuracy and on how many images its top class equals fp32's:
bf16 autocast + channels_last, eager and torch.compile'd (the paths benchmarks/speed.py
times against torchvision).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from alexnet.core.augment import Preprocess
from alexnet.core.checkpoint import load_inference
from alexnet.data.datasets import load_split
from alexnet.run.runtime import autocast


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--limit", type=int, help="only this many test images")
    args = p.parse_args()
    dev = torch.device("cpu")
    loaded = load_inference(args.checkpoint, dev)
    cfg = loaded.config
    split = load_split(False, dataclasses.replace(cfg.data, limit_val=args.limit), 500, ordered=True)
    preprocess = Preprocess(cfg.data, cfg.model.input_size, dev, True, loaded.mean_image)
    model = loaded.model.to(memory_format=torch.channels_last)
    paths = {"fp32": (model, "off"), "bf16": (model, "bf16"), "bf16 compiled": (torch.compile(model), "bf16")}
    top = {name: [] for name in paths}
    labels = []
    for x, y in split.loader:
        x = preprocess(x)
        for name, (net, amp) in paths.items():
            with autocast(dev, amp):
                top[name].append(net(x).argmax(1))
        labels.append(y)
    y = torch.cat(labels)
    ref = torch.cat(top["fp32"])
    print(f"$ python benchmarks/agreement.py {args.checkpoint}  ({len(y):,} images of {cfg.data.name})")
    for name, preds in top.items():
        preds = torch.cat(preds)
        print(
            f"{name:<14} top-1 {100 * (preds == y).float().mean():.2f}%   "
            f"top class = fp32's on {int((preds == ref).sum()):,} of {len(y):,}"
        )


if __name__ == "__main__":
    main()

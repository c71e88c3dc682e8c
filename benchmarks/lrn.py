"""LRN forward+backward: alexnet.lrn.LocalResponseNorm against torch.nn.LocalResponseNorm
with the same constants (alpha * n, since torch averages), on the shapes AlexNet feeds it.

    python benchmarks/lrn.py [--batch 128] [--repeats 7]

Both run in the same process, alternating, after warm-up; prints the median times, their
ratio, the largest difference of outputs and input gradients between the two, and each
one's largest output error against the exact value (the layer evaluated in float64).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from alexnet.lrn import LocalResponseNorm
from alexnet.runtime import tune_allocator

SHAPES = {  # (C, H, W) of the LRN inputs
    "paper conv1": (96, 55, 55),
    "paper conv2": (256, 27, 27),
    "small conv1": (36, 24, 24),
    "small conv2": (96, 11, 11),
}


def fwd_bwd(layer, x, g):
    x.grad = None
    y = layer(x)
    y.backward(g)
    return y, x.grad


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    tune_allocator()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name() if device.type == "cuda" else (platform.processor() or platform.machine())
    print(
        f"torch {torch.__version__}, {name}, "
        f"{torch.get_num_threads()} threads, batch {args.batch}, median of {args.repeats}"
    )
    print(
        f"{'shape':<14}{'layout':<15}{'torch ms':>10}{'ours ms':>10}{'ratio':>8}{'max |dy|':>11}{'max |dx|':>11}"
        f"{'torch err':>11}{'ours err':>11}"
    )
    for name, (c, h, w) in SHAPES.items():
        for fmt in (torch.contiguous_format, torch.channels_last):
            torch.manual_seed(0)
            x = (torch.randn(args.batch, c, h, w, device=device) * 30).contiguous(memory_format=fmt)
            x.requires_grad_()
            g = torch.randn_like(x)
            ours = LocalResponseNorm(c).to(device)
            ref = torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)
            times = {"ours": [], "ref": []}
            for i in range(args.repeats + 2):
                for label, layer in (("ours", ours), ("ref", ref)):
                    sync()
                    t = time.perf_counter()
                    fwd_bwd(layer, x, g)
                    sync()
                    if i >= 2:
                        times[label].append(time.perf_counter() - t)
            (y1, g1), (y2, g2) = fwd_bwd(ours, x, g), fwd_bwd(ref, x, g)
            with torch.no_grad():
                exact = ours(x.double())  # the paper's formula in float64
            t_ours, t_ref = statistics.median(times["ours"]), statistics.median(times["ref"])
            layout = "channels_last" if fmt == torch.channels_last else "NCHW"
            print(
                f"{name:<14}{layout:<15}{t_ref * 1e3:>10.1f}{t_ours * 1e3:>10.1f}{t_ref / t_ours:>7.2f}x"
                f"{(y1 - y2).abs().max().item():>11.1e}{(g1 - g2).abs().max().item():>11.1e}"
                f"{(y2 - exact).abs().max().item():>11.1e}{(y1 - exact).abs().max().item():>11.1e}"
            )


if __name__ == "__main__":
    main()

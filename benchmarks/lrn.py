"""LRN forward+backward on the shapes AlexNet feeds it: torch.nn.LocalResponseNorm (with
alpha * n, since torch averages), alexnet's layer as torch operations, and alexnet's
fused C kernel (src/alexnet/run/lrn.c, native.py).

    python benchmarks/lrn.py [--batch 128] [--repeats 7] [--device cpu] [--dtype bf16]

All three run in the same process, alternating, after warm-up; prints the median times,
the ratios (torch / fused kernel: how much faster the kernel is than each), and each
one's largest output error against the exact value (the layer evaluated in float64, on
the same input). The fused kernel is for the CPU (float32 and bfloat16): on a GPU its
column is empty.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from alexnet.core.lrn import LocalResponseNorm, set_kernel
from alexnet.run import native
from alexnet.run.runtime import tune_allocator

SHAPES = {  # (C, H, W) of the LRN inputs
    "paper conv1": (96, 55, 55),
    "paper conv2": (256, 27, 27),
    "small conv1": (28, 24, 24),  # the fashion-mnist recipe: small at width 0.75
    "small conv2": (72, 11, 11),
}


def fwd_bwd(layer: torch.nn.Module, x: torch.Tensor, g: torch.Tensor, kernel: str | None) -> torch.Tensor:
    x.grad = None
    if kernel is not None:
        set_kernel(layer, kernel)
    y = layer(x)
    y.backward(g)
    return y.detach()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--dtype", choices=("fp32", "bf16"), default="fp32", help="the input's type (bf16: as under autocast)"
    )
    args = p.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    tune_allocator()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name() if device.type == "cuda" else (platform.processor() or platform.machine())
    fused = device.type == "cpu" and native.library() is not None
    print(
        f"torch {torch.__version__}, {name}, {torch.get_num_threads()} threads, {args.dtype}, batch {args.batch}, "
        f"median of {args.repeats}; fused kernel: {native.kernel_status() if device.type == 'cpu' else 'CPU only'}"
    )
    print(
        f"{'shape':<13}{'layout':<14}{'nn.LRN ms':>10}{'ops ms':>9}{'fused ms':>9}"
        f"{'nn/fused':>9}{'ops/fused':>10}{'nn err':>9}{'ops err':>9}{'fused err':>10}"
    )
    for label, (c, h, w) in SHAPES.items():
        for fmt in (torch.contiguous_format, torch.channels_last):
            torch.manual_seed(0)
            x = (torch.randn(args.batch, c, h, w, device=device) * 30).relu().to(dtype).contiguous(memory_format=fmt)
            x.requires_grad_()
            g = torch.randn_like(x)
            ours = LocalResponseNorm(c).to(device)
            candidates = {"ops": (ours, "torch")}
            if dtype == torch.float32 or device.type != "cpu":  # torch's has no bf16 on the CPU
                candidates["nn"] = (torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0), None)
            if fused:
                candidates["fused"] = (ours, "fused")
            times: dict[str, list[float]] = {k: [] for k in candidates}
            for i in range(args.repeats + 2):
                for key, (layer, kernel) in candidates.items():
                    sync()
                    t = time.perf_counter()
                    fwd_bwd(layer, x, g, kernel)
                    sync()
                    if i >= 2:
                        times[key].append(time.perf_counter() - t)
            with torch.no_grad():
                exact = set_kernel(ours, "torch")(x.double())  # the paper's formula in float64
            ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            err = {
                k: (fwd_bwd(layer, x, g, kernel) - exact).abs().max().item()
                for k, (layer, kernel) in candidates.items()
            }
            nan = float("nan")
            f_ms, n_ms = ms.get("fused", nan), ms.get("nn", nan)
            print(
                f"{label:<13}{'channels_last' if fmt == torch.channels_last else 'NCHW':<14}"
                f"{n_ms:>10.1f}{ms['ops']:>9.1f}{f_ms:>9.1f}{n_ms / f_ms:>8.2f}x{ms['ops'] / f_ms:>9.2f}x"
                f"{err.get('nn', nan):>9.1e}{err['ops']:>9.1e}{err.get('fused', nan):>10.1e}"
            )


if __name__ == "__main__":
    main()

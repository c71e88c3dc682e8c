"""Local Response Normalization with the paper's semantics (§3.3), written by hand.

    b[c] = a[c] / (k + alpha * sum_{j=c-n/2}^{c+n/2} a[j]^2) ** beta

The paper SUMS the squares of n adjacent channels. torch.nn.LocalResponseNorm (like
Caffe) AVERAGES them, i.e. divides alpha by n, so the paper's layer equals
nn.LocalResponseNorm(n, alpha=n * alpha, beta, k) up to float rounding.

Why not nn.LocalResponseNorm: it builds the channel window with a padded 3-D average
pool, which is slow on CPU (it made a small AlexNet about 3x slower end to end here).
The windowed channel sum is a banded C x C matrix applied along the channel axis: one
matrix product, which with channels_last memory is a plain contiguous GEMM. Backward is
written out, keeping a, d^-beta and d^(-beta-1) from the forward pass:

    d = k + alpha * B(a^2),  b = a * d^-beta
    grad_a = g * d^-beta - 2 * alpha * beta * a * B(g * b / d)

(B is symmetric, so B^T = B).

The fused kernel: on the CPU, float32 tensors (any layout) and bfloat16 tensors
(channels_last) go through native.py's C kernel (lrn.c), one pass over memory each way,
which recomputes d in the backward instead of saving it: in fp32 2.3-4.2x faster than
these torch operations in channels_last (docs/BENCHMARKS.md). It computes bf16 inputs in
float32 and rounds the result once. The kernel is each layer's setting
(LocalResponseNorm(kernel=...), set_kernel(model, ...)): torch operations unless chosen.
Each entry point chooses it once, explicitly (core/machine.py): `select_kernel("auto")`
takes it where it builds, matches the float64 reference on a test tensor, and measures
faster; `fused` insists; `torch` never uses it. Nothing is built or timed in a forward.

Precision of the torch operations: float32 and float64 inputs are computed in their own
type (exact to rounding). Under bf16 autocast the layer computes in bf16 like the
convolutions around it, which halves its cost: bf16 has fp32's range, and rounding
d = k + alpha * sum to bf16 only hides effects smaller than the bf16 resolution of the
output itself. fp16 inputs are computed in fp32, since squares of activations above 256
overflow fp16.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..run import native
from ..run.errors import UserError


def band_matrix(channels: int, size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """C x C matrix with ones where |i - j| <= size // 2: the paper's channel window."""
    idx = torch.arange(channels, device=device)
    return ((idx[:, None] - idx[None, :]).abs() <= size // 2).float()


# Up to this many channels the window sum is one dense C x C matrix product (C multiply-
# adds per element, all in one well-tuned GEMM); above it, blocks of BLOCK channels with
# their 2 * (n // 2) neighbours, so that conv2's 256 channels cost 36, not 256, per element.
DENSE_MAX_CHANNELS = 128
BLOCK = 32


def _channel_window_sum(
    x: torch.Tensor, band: torch.Tensor, size: int, scale: float = 1.0, bias: float | None = None
) -> torch.Tensor:
    """bias + scale * (sum of x over the channel window), in x's memory layout.

    band is the C x C 0/1 window matrix (band_matrix). channels_last: a matrix product
    over (N*H*W, C) rows, dense or blocked. NCHW: the window's shifted slices added up
    (contiguous blocks in this layout), size - 1 additions per element.
    """
    n, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last):
        rows = x.permute(0, 2, 3, 1).reshape(-1, c)  # a view: (N*H*W, C)
        if c <= DENSE_MAX_CHANNELS:  # one fused call: bias + scale * rows @ band
            out = torch.addmm(rows.new_full((c,), 0.0 if bias is None else bias), rows, band.to(x.dtype), alpha=scale)
            return out.view(n, h, w, c).permute(0, 3, 1, 2)
        half, blocks = size // 2, -(-c // BLOCK)
        padded = F.pad(rows, (half, half + blocks * BLOCK - c))
        windows = padded.unfold(1, BLOCK + 2 * half, BLOCK)  # (M, blocks, BLOCK + 2h)
        k = torch.arange(BLOCK + 2 * half, device=x.device)
        kernel = ((k[:, None] - torch.arange(BLOCK, device=x.device)[None, :] - half).abs() <= half).to(
            x.dtype
        )  # (BLOCK + 2h, BLOCK)
        # one GEMM over all (row, block) pairs; the reshape copies the overlapping windows
        out = torch.mm(windows.reshape(-1, windows.shape[-1]), kernel).view(rows.shape[0], -1)[:, :c]
        out = out.mul_(scale) if scale != 1.0 else out
        out = out.add_(bias) if bias is not None else out
        return out.contiguous().view(n, h, w, c).permute(0, 3, 1, 2)
    half = size // 2
    padded = F.pad(x, (0, 0, 0, 0, half, half))
    out = padded[:, :c].clone()
    for j in range(1, size):
        out += padded[:, j : j + c]
    out = out.mul_(scale) if scale != 1.0 else out
    return out.add_(bias) if bias is not None else out


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The input's own type, but fp32 for fp16 (whose squares overflow)."""
    return torch.float32 if x.dtype == torch.float16 else x.dtype


def _power(d: torch.Tensor, beta: float) -> torch.Tensor:
    """d ** -beta, without torch.pow on the CPU, where it is the layer's slowest pass.

    bf16 with the paper's beta = 0.75: 1 / sqrt(d * sqrt(d)), within an ulp of pow and 2.5x
    faster (the whole layer 15-20%). fp32/fp64 on the CPU: exp(-beta * log d), 3.5x faster
    than pow on 128x36x24x24 (1.1 against 3.8 ms, 2-core Xeon, docs/BENCHMARKS.md); d >= k
    = 2, so log d is well conditioned and the result is within a few ulps (tests/test_lrn.py
    compares with float64). On GPUs pow is one fused kernel: kept.
    """
    if beta == 0.75 and d.dtype == torch.bfloat16:
        return torch.rsqrt(d * d.sqrt())
    if d.device.type == "cpu":
        return d.log().mul_(-beta).exp_()
    return d.pow(-beta)


def _denominator(
    x: torch.Tensor, band: torch.Tensor, size: int, k: float, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """x in the compute type, and d = k + alpha * (windowed sum of x^2)."""
    xf = x.to(_compute_dtype(x))
    return xf, _channel_window_sum(xf * xf, band, size, scale=alpha, bias=k)


# The test tensor of the auto choice: (N, C, H, W) channels_last, the size of a small
# model's LRN input; the fused kernel must stay within CHECK_TOLERANCE (relative, by type:
# float32 rounding, or one bf16 rounding of the result) of the float64 reference, and be
# faster in both types over CHECK_ROUNDS alternating timed calls.
CHECK_SHAPE, CHECK_ROUNDS = (32, 48, 16, 16), 5
CHECK_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
TYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}
KERNELS = ("fused", "torch")


def _fusable(x: torch.Tensor) -> bool:
    """Whether the fused kernel takes this tensor: a 4-D float32 or bfloat16 CPU tensor, but
    not bf16 in NCHW: the kernel works in channels_last, and converting there and back made
    it 0.87-1.39x the torch operations (docs/BENCHMARKS.md); in fp32 1.3-1.9x."""
    if x.device.type != "cpu" or x.dtype not in native.DTYPES or x.dim() != 4:
        return False
    return x.dtype != torch.bfloat16 or x.is_contiguous(memory_format=torch.channels_last)


def select_kernel(asked: str = "auto") -> tuple[str, str]:
    """The LRN for float32 and bfloat16 CPU tensors on this machine: ("fused" or "torch",
    why). "auto" builds the kernel, checks it and times it; set it with set_kernel."""
    if asked == "torch":
        return "torch", "as asked"
    if native.library() is None:
        if asked == "fused":
            raise UserError(f"--lrn-kernel fused: {native.kernel_status()}")
        return "torch", f"the fused kernel is not available: {native.kernel_status()}"
    return _check_fused(asked)


def set_kernel(module: nn.Module, kernel: str) -> nn.Module:
    """Every LocalResponseNorm in `module` set to `kernel` ("fused" or "torch"), without
    select_kernel's check and timing; UserError where the fused kernel does not build."""
    if kernel not in KERNELS:
        raise ValueError(f"LRN kernel {kernel!r}: one of {KERNELS}")
    if kernel == "fused" and native.library() is None:
        raise UserError(f"the fused LRN kernel: {native.kernel_status()}")
    for layer in module.modules():
        if isinstance(layer, LocalResponseNorm):
            layer.kernel = kernel
    return module


def kernel_of(module: nn.Module) -> str | None:
    """The kernel of `module`'s LRN layers (None: it has none)."""
    return next((m.kernel for m in module.modules() if isinstance(m, LocalResponseNorm)), None)


def _check_fused(asked: str) -> tuple[str, str]:
    """The fused kernel's check: its error against float64, then, for auto, its speed."""
    with _grad_mode():
        errors = {dtype: fused_error(dtype) for dtype in CHECK_TOLERANCE}
    for dtype, error in errors.items():
        if not error <= CHECK_TOLERANCE[dtype]:
            off = f"relative error {error:.1e} in {TYPE_NAMES[dtype]}"
            if asked == "fused":
                raise UserError(f"--lrn-kernel fused: the kernel ({native.kernel_status()}) failed its check: {off}")
            return "torch", f"the fused kernel failed its check: {off}"
    if asked == "fused":
        return "fused", f"as asked; {native.kernel_status()}"
    with _grad_mode():
        speedups = {dtype: fused_speedup(dtype) for dtype in CHECK_TOLERANCE}
    for dtype, speedup in speedups.items():
        if speedup < 1:
            return "torch", f"the fused kernel measured {1 / speedup:.2f}x slower on this CPU in {TYPE_NAMES[dtype]}"
    ratios = ", ".join(f"{TYPE_NAMES[dtype]} {speedup:.1f}x" for dtype, speedup in speedups.items())
    return "fused", f"{ratios} the speed of the torch operations on this CPU; {native.kernel_status()}"


def _check_tensors(
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, float, float, float]]:
    """The check's input (ReLU-like, pixel-scale), output gradient, band and constants."""
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(CHECK_SHAPE, generator=generator) * 30).relu_().to(dtype)
    g = torch.randn(CHECK_SHAPE, generator=generator).to(dtype)
    layout = torch.channels_last
    return (
        x.contiguous(memory_format=layout),
        g.contiguous(memory_format=layout),
        band_matrix(CHECK_SHAPE[1], 5),
        (5, 2.0, 1e-4, 0.75),
    )


def _grad_mode() -> contextlib.AbstractContextManager[None]:
    """Gradients on, no autocast: the check may be made under no_grad, inference_mode or
    autocast."""
    stack = contextlib.ExitStack()
    for context in (torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False)):
        stack.enter_context(context)
    return stack


def fused_error(dtype: torch.dtype) -> float:
    """The fused kernel's largest relative error (over the largest value) against float64,
    output and gradient, for inputs of `dtype`."""
    x, g, band, (size, k, alpha, beta) = _check_tensors(dtype)
    x64 = x.double().requires_grad_()
    reference = _LRNFunction.apply(x64, band.double(), size, k, alpha, beta, False)
    reference.backward(g.double())
    y = native.lrn_forward(x, size // 2, k, alpha, beta)
    grad = native.lrn_backward(x, g, size // 2, k, alpha, beta)
    return max(
        ((y.double() - reference.detach()).abs().max() / reference.detach().abs().max()).item(),
        ((grad.double() - x64.grad).abs().max() / x64.grad.abs().max()).item(),
    )


def fused_speedup(dtype: torch.dtype) -> float:
    """Seconds of the torch operations / seconds of the fused kernel, forward and backward
    on the check tensor in `dtype`, median of CHECK_ROUNDS alternating rounds after one to
    warm up."""
    x, g, band, (size, k, alpha, beta) = _check_tensors(dtype)
    x.requires_grad_()

    def composed() -> None:
        x.grad = None
        _composed(x, band, size, k, alpha, beta).backward(g)

    def fused() -> None:
        native.lrn_forward(x, size // 2, k, alpha, beta)
        native.lrn_backward(x, g, size // 2, k, alpha, beta)

    times: dict[str, list[float]] = {"torch": [], "fused": []}
    for _ in range(CHECK_ROUNDS + 1):
        for name, fn in (("torch", composed), ("fused", fused)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["torch"][1:]) / statistics.median(times["fused"][1:])


def _composed(x: torch.Tensor, band: torch.Tensor, size: int, k: float, alpha: float, beta: float) -> torch.Tensor:
    """The layer as torch operations with the hand-written backward."""
    return _LRNFunction.apply(x, band, size, k, alpha, beta, False)


class _LRNFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, band: torch.Tensor, size: int, k: float, alpha: float, beta: float, fused: bool
    ) -> torch.Tensor:
        ctx.constants, ctx.fused = (size, k, alpha, beta), fused
        backward = ctx.needs_input_grad[0]  # False under no_grad (evaluation, serve): keep nothing
        if ctx.fused:  # one pass in C; the backward recomputes d from x
            if backward:
                ctx.save_for_backward(x)
            return native.lrn_forward(x, size // 2, k, alpha, beta)
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf, denom = _denominator(x, band, size, k, alpha)
            scale = _power(denom, beta)  # d^-beta
            out = xf * scale
            if backward:
                ctx.save_for_backward(xf, scale, scale / denom, band)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        size, k, alpha, beta = ctx.constants
        if ctx.fused:
            (x,) = ctx.saved_tensors
            return native.lrn_backward(x, grad_out, size // 2, k, alpha, beta), None, None, None, None, None, None
        xf, scale, scale_over_denom, band = ctx.saved_tensors
        with torch.autocast(device_type=xf.device.type, enabled=False):
            g = grad_out.to(xf.dtype)
            t = g * xf
            t.mul_(scale_over_denom)  # g * b / d
            grad = g * scale
            grad.addcmul_(xf, _channel_window_sum(t, band, size), value=-2.0 * alpha * beta)
        return grad.to(grad_out.dtype), None, None, None, None, None, None


def lrn_expression(x: torch.Tensor, band: torch.Tensor, size: int, k: float, alpha: float, beta: float) -> torch.Tensor:
    """_LRNFunction's forward as plain tensor operations (the same ones, so the same numbers).

    For exporters, which record tensor operations: torch.jit.trace keeps a custom
    autograd.Function as a Python call it cannot save, and the TorchScript ONNX exporter
    sees inside it only through its deprecated autograd inlining.
    """
    xf, denom = _denominator(x, band, size, k, alpha)
    return (xf * _power(denom, beta)).to(x.dtype)


class LocalResponseNorm(nn.Module):
    """The paper's LRN (§3.3): sum (not mean) of squares over `size` adjacent channels.

    Defaults are the paper's constants: n = 5, k = 2, alpha = 1e-4, beta = 0.75.
    `channels` fixes the band matrix, kept as a non-persistent buffer (it follows
    .to(device) and stays out of the state dict). `kernel`: "torch" (operations, the
    default) or "fused" (lrn.c, for float32/bfloat16 CPU tensors; set_kernel).
    """

    def __init__(
        self,
        channels: int,
        size: int = 5,
        alpha: float = 1e-4,
        beta: float = 0.75,
        k: float = 2.0,
        kernel: str = "torch",
    ) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k, self.kernel = size, alpha, beta, k, "torch"
        if kernel != "torch":
            set_kernel(self, kernel)
        self.register_buffer("band", band_matrix(channels, size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
            # Tracers and torch.compile get plain operations (compile derives the backward and
            # fuses them). Not the Function: TorchDynamo (torch 2.14) loses the autocast state
            # after a Function that switches autocast off inside, and the next bf16 layer fails.
            with torch.autocast(x.device.type, enabled=False):
                return lrn_expression(x, self.band, self.size, self.k, self.alpha, self.beta)
        fused = self.kernel == "fused" and _fusable(x)
        return _LRNFunction.apply(x, self.band, self.size, self.k, self.alpha, self.beta, fused)

    def extra_repr(self) -> str:
        return (
            f"{self.band.shape[0]}, size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k} (sum of squares)"
        )

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

Precision: float32 and float64 inputs are computed in their own type (exact to rounding).
Under bf16 autocast the layer computes in bf16 like the convolutions around it, which
halves its cost: bf16 has fp32's range, and rounding d = k + alpha * sum to bf16 only
hides effects smaller than the bf16 resolution of the output itself. fp16 inputs are
computed in fp32, since squares of activations above 256 overflow fp16.
"""

from __future__ import annotations

import torch
from torch import nn


def band_matrix(channels: int, size: int, device=None) -> torch.Tensor:
    """C x C matrix with ones where |i - j| <= size // 2: the paper's channel window."""
    idx = torch.arange(channels, device=device)
    return ((idx[:, None] - idx[None, :]).abs() <= size // 2).float()


def _channel_window_sum(x: torch.Tensor, band: torch.Tensor, bias: float | None = None) -> torch.Tensor:
    """bias + sum over the channel window of x, as one matrix product, in x's memory layout."""
    n, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last):
        rows = x.permute(0, 2, 3, 1).reshape(-1, c)  # a view: (N*H*W, C)
        out = torch.addmm(rows.new_full((c,), bias), rows, band) if bias is not None else rows @ band
        return out.view(n, h, w, c).permute(0, 3, 1, 2)
    out = torch.matmul(band, x.reshape(n, c, h * w))  # band is symmetric: B x == x^T B
    if bias is not None:
        out.add_(bias)
    return out.view(n, c, h, w)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The input's own type, but fp32 for fp16 (whose squares overflow)."""
    return torch.float32 if x.dtype == torch.float16 else x.dtype


def _denominator(x: torch.Tensor, band: torch.Tensor, k: float, alpha: float):
    """x in the compute type, and d = k + alpha * (windowed sum of x^2)."""
    xf = x.to(_compute_dtype(x))
    return xf, _channel_window_sum(xf * xf, band.to(xf.dtype) * alpha, bias=k)


class _LRNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, band, k: float, alpha: float, beta: float):
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf, denom = _denominator(x, band, k, alpha)
            scale = denom.pow(-beta)                                    # d^-beta
            out = xf * scale
            ctx.save_for_backward(xf, scale, scale / denom, band.to(xf.dtype))
        ctx.constants = (alpha, beta)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        xf, scale, scale_over_denom, band = ctx.saved_tensors
        alpha, beta = ctx.constants
        with torch.autocast(device_type=xf.device.type, enabled=False):
            g = grad_out.to(xf.dtype)
            t = g * xf
            t.mul_(scale_over_denom)                                    # g * b / d
            grad = g * scale
            grad.addcmul_(xf, _channel_window_sum(t, band), value=-2.0 * alpha * beta)
        return grad.to(grad_out.dtype), None, None, None, None


def lrn_expression(x: torch.Tensor, band: torch.Tensor, k: float, alpha: float,
                   beta: float) -> torch.Tensor:
    """_LRNFunction's forward as plain tensor operations (the same ones, so the same numbers).

    For exporters, which record tensor operations: torch.jit.trace keeps a custom
    autograd.Function as a Python call it cannot save, and the TorchScript ONNX exporter
    sees inside it only through its deprecated autograd inlining.
    """
    xf, denom = _denominator(x, band, k, alpha)
    return (xf * denom.pow(-beta)).to(x.dtype)


class LocalResponseNorm(nn.Module):
    """The paper's LRN (§3.3): sum (not mean) of squares over `size` adjacent channels.

    Defaults are the paper's constants: n = 5, k = 2, alpha = 1e-4, beta = 0.75.
    `channels` fixes the band matrix, kept as a non-persistent buffer (it follows
    .to(device) and stays out of the state dict).
    """

    def __init__(self, channels: int, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
                 k: float = 2.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.register_buffer("band", band_matrix(channels, size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return lrn_expression(x, self.band, self.k, self.alpha, self.beta)
        return _LRNFunction.apply(x, self.band, self.k, self.alpha, self.beta)

    def extra_repr(self) -> str:
        return (f"{self.band.shape[0]}, size={self.size}, alpha={self.alpha}, beta={self.beta}, "
                f"k={self.k} (sum of squares)")

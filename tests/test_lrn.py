import pytest
import torch

from alexnet.core.lrn import LocalResponseNorm
from alexnet.run import native


def lrn_formula(a: torch.Tensor, n=5, k=2.0, alpha=1e-4, beta=0.75) -> torch.Tensor:
    """§3.3 written out literally, channel by channel, in float64."""
    a = a.double()
    c = a.shape[1]
    out = torch.empty_like(a)
    for i in range(c):
        lo, hi = max(0, i - n // 2), min(c - 1, i + n // 2)
        s = (a[:, lo : hi + 1] ** 2).sum(dim=1)
        out[:, i] = a[:, i] / (k + alpha * s) ** beta
    return out


@pytest.mark.parametrize("channels", [12, 200, 256])  # dense band; blocked with a ragged end; blocked
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("scale", [1.0, 100.0])  # 100: pixel-scale activations, LRN matters
def test_matches_the_formula(channels, channels_last, scale):
    torch.manual_seed(0)
    x = torch.randn(2, channels, 5, 6) * scale
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = LocalResponseNorm(channels)(x)
    expected = lrn_formula(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), expected, rtol=2e-6, atol=1e-6 * scale)
    if scale == 100.0:  # the normalisation is not negligible here, so the test has teeth
        assert (expected - x.double() / 2**0.75).abs().max() > 0.1


def test_equals_torch_lrn_with_alpha_times_n():
    torch.manual_seed(0)
    x = torch.randn(3, 16, 7, 7) * 50
    ref = torch.nn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.0)(x)
    torch.testing.assert_close(LocalResponseNorm(16)(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels", [7, 140])
def test_gradient_is_exact(channels):
    torch.manual_seed(0)
    x = (torch.randn(2, channels, 3, 2, dtype=torch.float64) * 60).requires_grad_()
    assert torch.autograd.gradcheck(LocalResponseNorm(channels), (x,))
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(LocalResponseNorm(channels), (xc,))


def test_gradient_matches_autograd_of_formula_float32():
    torch.manual_seed(0)
    x = (torch.randn(4, 20, 6, 6) * 40).requires_grad_()
    g = torch.randn(4, 20, 6, 6)
    LocalResponseNorm(20)(x).backward(g)
    x64 = x.detach().double().requires_grad_()
    lrn_formula(x64).backward(g.double())
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_keeps_the_normalisation(dtype):
    torch.manual_seed(0)
    x = (torch.randn(2, 8, 4, 4) * 300).to(dtype)  # squares overflow fp16: computed in fp32
    with torch.autocast("cpu", dtype=dtype):
        y = LocalResponseNorm(8)(x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    expected = lrn_formula(x.float())
    assert (expected - x.double() / 2**0.75).abs().max() > 10  # the layer does something
    torch.testing.assert_close(y.double(), expected, rtol=2e-2, atol=0.05)


def test_band_is_not_in_the_state_dict_and_follows_dtype_moves():
    m = LocalResponseNorm(6)
    assert list(m.state_dict()) == []
    assert m.band.shape == (6, 6) and int(m.band.sum()) == 6 * 5 - 2 * 3  # 5-wide band, clipped


@pytest.mark.slow
@pytest.mark.parametrize("amp", [False, True])
def test_compiled_training_step_equals_eager(amp):
    """torch.compile (train --compile) under bf16 autocast: TorchDynamo used to lose the
    autocast state after the LRN's Function, and the next layer failed on bf16 input."""
    import torch.nn.functional as F

    from alexnet.core.model import build_model

    torch.manual_seed(0)
    model = build_model("small", num_classes=10, dropout=0.0).to(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 28, 28).contiguous(memory_format=torch.channels_last) * 3
    y = torch.arange(4)
    compiled = torch.compile(model)
    losses, grads = [], []
    for net in (model, compiled):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        losses.append(loss.detach())
        grads.append(model.features[0].weight.grad.clone())
    tol = dict(rtol=3e-2, atol=3e-2) if amp else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(losses[1], losses[0], **tol)
    torch.testing.assert_close(grads[1], grads[0], **tol)


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param((2, 96, 55, 55), marks=pytest.mark.slow),  # paper conv1,
        pytest.param((2, 256, 27, 27), marks=pytest.mark.slow),  # conv2 (seconds)
        (4, 36, 24, 24),
        (4, 96, 11, 11),  # small conv1, conv2
        (4, 28, 24, 24),
        (4, 72, 11, 11),
    ],
)  # small at width 0.75
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kernel", ["torch", "fused"])
def test_model_shapes_match_float64_forward_and_gradient(shape, channels_last, kernel, lrn_kernel, monkeypatch):
    """fp32 against the formula in float64, on the shapes the models use: < 1e-5 relative
    (largest error over largest value) for the output and the input gradient; with the
    torch operations and with the fused C kernel (which must really run)."""
    calls = []
    for name in ("lrn_forward", "lrn_backward"):
        real = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    lrn_kernel(kernel)
    calls.clear()  # the kernel's own check ran it
    torch.manual_seed(0)
    x = torch.relu(torch.randn(shape)) * 60  # ReLU outputs at a scale where LRN matters
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    g = torch.randn(shape)
    y = LocalResponseNorm(shape[1], kernel=kernel)(x)
    y.backward(g)
    x64 = x.detach().double().requires_grad_()
    y64 = lrn_formula(x64)
    y64.backward(g.double())
    assert ((y.double() - y64).abs().max() / y64.abs().max()) < 1e-5
    assert ((x.grad.double() - x64.grad).abs().max() / x64.grad.abs().max()) < 1e-5
    assert calls == (["lrn_forward", "lrn_backward"] if kernel == "fused" else [])


@pytest.mark.parametrize("shape", [(4, 28, 24, 24), (4, 72, 11, 11), (2, 96, 13, 13)])
def test_fused_bf16_is_one_rounding_from_float64(shape, lrn_kernel):
    """bf16 in channels_last (what autocast feeds the layer in training): the fused kernel
    computes in float32 and rounds once, so it stays within bf16's resolution of float64
    (output and gradient), closer than the torch operations, which compute in bf16."""
    lrn_kernel("fused")
    torch.manual_seed(0)
    x = (torch.relu(torch.randn(shape)) * 60).bfloat16().contiguous(memory_format=torch.channels_last)
    g = torch.randn(shape).bfloat16()
    x64 = x.detach().double().requires_grad_()
    y64 = lrn_formula(x64)
    y64.backward(g.double())
    errors = {}
    for kernel in ("fused", "torch"):
        xk = x.clone(memory_format=torch.preserve_format).requires_grad_()
        y = LocalResponseNorm(shape[1], kernel=kernel)(xk)
        y.backward(g)
        assert y.dtype == xk.grad.dtype == torch.bfloat16
        errors[kernel] = (
            ((y.double() - y64).abs().max() / y64.abs().max()).item(),
            ((xk.grad.double() - x64.grad).abs().max() / x64.grad.abs().max()).item(),
        )
    assert max(errors["fused"]) < 2**-8  # one bf16 rounding: at most half of 2^-7 relative
    assert errors["fused"][0] <= errors["torch"][0] and errors["fused"][1] <= errors["torch"][1]


def test_fused_kernel_takes_fp32_in_any_layout_and_bf16_in_channels_last(lrn_kernel, monkeypatch):
    lrn_kernel("fused")
    calls = []
    monkeypatch.setattr(native, "lrn_forward", lambda x, *a: calls.append((x.dtype, x.shape)) or torch.zeros_like(x))
    layer = LocalResponseNorm(6, kernel="fused")
    for dtype in (torch.float32, torch.bfloat16):
        for layout in (torch.contiguous_format, torch.channels_last):
            layer(torch.randn(2, 6, 3, 3, dtype=dtype).contiguous(memory_format=layout))
    layer(torch.randn(2, 6, 3, 3, dtype=torch.float64))  # float64 (the tests' reference): torch operations
    assert calls == [(torch.float32, (2, 6, 3, 3))] * 2 + [(torch.bfloat16, (2, 6, 3, 3))]


def test_no_grad_keeps_nothing_for_a_backward(monkeypatch):
    """Under no_grad (evaluation, serve) the Function saves no tensors and computes no
    backward terms; with grad it does, and its gradient is unchanged."""
    layer = LocalResponseNorm(8)
    x = torch.randn(2, 8, 5, 5)
    saved = []
    original = torch.autograd.function.FunctionCtx.save_for_backward
    monkeypatch.setattr(
        torch.autograd.function.FunctionCtx, "save_for_backward", lambda ctx, *t: (saved.append(t), original(ctx, *t))
    )
    with torch.no_grad():
        y0 = layer(x)
    assert saved == []
    y1 = layer(x.requires_grad_())
    assert saved and torch.equal(y0, y1.detach())
    y1.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()

"""The fused LRN kernel's build (native.py) and the choice between it and the torch
operations (lrn.select_kernel). Its numbers against float64: tests/test_lrn.py."""

import json

import pytest
import torch

from alexnet.core import lrn
from alexnet.core.lrn import LocalResponseNorm
from alexnet.run import native
from alexnet.run.errors import UserError
from test_lrn import lrn_formula


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """native's build state emptied, its cache in tmp_path: the next library() call builds."""
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture
def mocked_kernel(monkeypatch, fresh_build):
    """A kernel that 'built' and whose check and speed the test sets: set(error, speedup)."""
    monkeypatch.setattr(native, "library", lambda: object())
    monkeypatch.setattr(native, "kernel_status", lambda: "built with cc -O3")

    def set_(error: float, speedup: float, bf16_speedup: float = 2.0, bf16_error: float = 1e-3) -> None:
        monkeypatch.setattr(lrn, "fused_error", lambda dtype: error if dtype == torch.float32 else bf16_error)
        monkeypatch.setattr(lrn, "fused_speedup", lambda dtype: speedup if dtype == torch.float32 else bf16_speedup)

    return set_


def test_auto_takes_the_fused_kernel_where_it_measures_faster(mocked_kernel):
    mocked_kernel(1e-7, 2.5)
    assert lrn.select_kernel("auto") == (
        "fused",
        "fp32 2.5x, bf16 2.0x the speed of the torch operations on this CPU; built with cc -O3",
    )
    mocked_kernel(1e-7, 0.8)
    assert lrn.select_kernel("auto") == ("torch", "the fused kernel measured 1.25x slower on this CPU in fp32")
    mocked_kernel(1e-7, 1.5, bf16_speedup=0.5)  # faster in one type only: not taken
    assert lrn.select_kernel("auto") == ("torch", "the fused kernel measured 2.00x slower on this CPU in bf16")
    assert lrn.select_kernel("fused")[0] == "fused"  # asked for: no timing
    assert lrn.select_kernel("torch") == ("torch", "as asked")


def test_a_kernel_that_fails_its_check_is_not_used(mocked_kernel):
    mocked_kernel(3e-3, 5.0)
    assert lrn.select_kernel("auto") == ("torch", "the fused kernel failed its check: relative error 3.0e-03 in fp32")
    with pytest.raises(UserError, match=r"--lrn-kernel fused: .* failed its check: relative error 3.0e-03 in fp32"):
        lrn.select_kernel("fused")
    mocked_kernel(float("nan"), 5.0)  # NaN is not "within tolerance"
    assert lrn.select_kernel("auto")[0] == "torch"
    mocked_kernel(1e-7, 5.0, bf16_error=0.05)  # bf16's tolerance is one bf16 rounding, not more
    assert lrn.select_kernel("auto") == ("torch", "the fused kernel failed its check: relative error 5.0e-02 in bf16")


def test_without_a_compiler_the_layer_runs_as_torch_operations(fresh_build, monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    kernel, reason = lrn.select_kernel("auto")
    assert (
        kernel == "torch"
        and reason == "the fused kernel is not available: no C compiler found (cc, gcc or clang; or set CC)"
    )
    with pytest.raises(UserError, match="--lrn-kernel fused: no C compiler found"):
        lrn.select_kernel("fused")
    x = torch.randn(2, 8, 3, 3) * 50  # and the layer still works
    torch.testing.assert_close(LocalResponseNorm(8)(x).double(), lrn_formula(x), rtol=2e-6, atol=1e-6)


def test_a_compiler_that_fails_is_reported_in_one_line(fresh_build, monkeypatch, tmp_path):
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: internal error: no luck' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    assert native.library() is None
    assert native.kernel_status() == "cc could not build lrn.c: cc: internal error: no luck"
    assert not list((tmp_path / "kernels").glob("*"))  # no half-written library left behind


@pytest.mark.parametrize("openmp", [True, False])
def test_the_build_is_cached_and_both_thread_paths_agree(fresh_build, monkeypatch, lrn_kernel, openmp):
    """With OpenMP (linked to torch's runtime) and without (Python threads split the rows):
    the same numbers as float64, on a tensor big enough to be split among threads."""
    lrn_kernel("fused")  # skips without a compiler
    monkeypatch.setattr(native, "_state", {})
    if not openmp:
        monkeypatch.setattr(native, "_openmp_runtime", lambda: None)
    assert native.library() is not None
    if openmp and native._openmp_runtime() is None:
        pytest.skip("torch loaded no OpenMP runtime here")
    assert native._state["openmp"] is openmp and ("-fopenmp" in native.kernel_status()) is openmp
    assert list((fresh_build / "kernels").glob("lrn-*.so"))
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "_compile", lambda *a: pytest.fail("built again instead of loading the cache"))
    assert native.library() is not None

    torch.manual_seed(0)
    x = (torch.randn(8, 20, 30, 30) * 60).relu().contiguous(memory_format=torch.channels_last)
    g = torch.randn(8, 20, 30, 30)
    assert x.numel() > native.PARALLEL_MIN_VALUES and torch.get_num_threads() >= 1
    x64 = x.double().requires_grad_()
    y64 = lrn_formula(x64)
    y64.backward(g.double())
    y, grad = native.lrn_forward(x, 2, 2.0, 1e-4, 0.75), native.lrn_backward(x, g, 2, 2.0, 1e-4, 0.75)
    assert ((y.double() - y64).abs().max() / y64.abs().max()) < 1e-5
    assert ((grad.double() - x64.grad).abs().max() / x64.grad.abs().max()) < 1e-5


def test_fused_kernel_under_no_grad_and_for_other_sizes(lrn_kernel):
    """Inference (no_grad) and a window other than the paper's n = 5."""
    lrn_kernel("fused")
    torch.manual_seed(0)
    x = (torch.randn(3, 11, 4, 5) * 80).contiguous(memory_format=torch.channels_last)
    for size in (3, 7):
        layer = LocalResponseNorm(11, size=size, beta=0.6, kernel="fused")  # beta != 0.75: the powf path
        with torch.no_grad():
            y = layer(x)
        torch.testing.assert_close(y.double(), lrn_formula(x, n=size, beta=0.6), rtol=2e-6, atol=1e-5)


def test_a_layer_builds_and_times_nothing_and_the_check_runs_under_no_grad(fresh_build, lrn_kernel, monkeypatch):
    """A bare layer or AlexNet runs the torch operations: its forward builds no kernel and
    times nothing (entry points choose, core/machine.select_lrn). The choice itself works
    where an entry point may make it, under inference_mode, where the check's own backward
    must still run."""
    from alexnet.config import ModelConfig
    from alexnet.core.model import AlexNet

    lrn_kernel("fused")  # skips without a compiler
    model = AlexNet(ModelConfig(name="small", in_channels=1, num_classes=10, input_size=28))
    assert model.lrn_kernel == "torch" and LocalResponseNorm(8).kernel == "torch"
    with monkeypatch.context() as m:
        m.setattr(native, "library", lambda: pytest.fail("a forward built the kernel"))
        m.setattr(lrn, "select_kernel", lambda *a: pytest.fail("a forward chose the kernel"))
        with torch.inference_mode():
            model(torch.randn(2, 1, 28, 28))
    with torch.inference_mode():
        kernel, reason = lrn.select_kernel("auto")
    assert kernel in ("fused", "torch") and reason
    assert model.set_lrn_kernel("fused").lrn_kernel == "fused"


def test_cc_with_words_and_a_cache_that_cannot_be_written(fresh_build, monkeypatch, lrn_kernel, tmp_path):
    """CC="env gcc"-style commands work, and a cache folder that cannot be made (here: below
    a plain file, which stops root too) falls back to the temporary directory."""
    import shutil

    lrn_kernel("fused")  # skips without a compiler
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    monkeypatch.setenv("CC", f"env {compiler}")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ALEXNET_CACHE", str(blocker / "cache"))
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(temp))
    monkeypatch.setattr(native, "_state", {})
    assert native.library() is not None, native.kernel_status()
    assert native.kernel_status().startswith("built with env ")
    assert list(temp.glob("alexnet-kernels-*/lrn-*.so"))


def test_a_run_resumes_where_its_fused_kernel_does_not_build(fashion_dir, tmp_path, lrn_kernel, monkeypatch, cli):
    """A run trained with the fused kernel, resumed on a machine without a compiler:
    `--lrn-kernel auto` falls back to the torch operations (and says so); asking for
    `fused` there is refused in one line."""
    lrn_kernel("fused")  # skips without a compiler
    out = tmp_path / "run"
    args = ["train", "--data-dir", fashion_dir, "--limit-train", "256", "--limit-val", "64", "--batch-size", "64"]
    args += ["--width", "0.25", "--amp", "off", "--out", out]
    rc, _, _ = cli(*args, "--epochs", "1", "--lrn-kernel", "fused")
    assert rc == 0
    assert json.loads((out / "config.json").read_text())["train"]["lrn_kernel"] == "fused"
    monkeypatch.setattr(native, "_state", {"error": "no C compiler found (cc, gcc or clang; or set CC)"})
    rc, _, err = cli(*args, "--epochs", "2", "--resume", "--lrn-kernel", "fused")
    assert rc == 2 and "--lrn-kernel fused: no C compiler found" in err
    rc, stdout, _ = cli(*args, "--epochs", "2", "--resume")
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["lrn_kernel"] == "torch" and "not available" in cfg["plan"]["lrn"]["reason"]
    assert "alexnet: LRN torch operations (the fused kernel is not available: no C compiler found" in stdout


def test_an_infinite_activation_stays_in_its_own_pixel(lrn_kernel):
    """The kernel sums channel windows over blocks of pixels: a value in one pixel must not
    reach its neighbours in the block, even an infinite one (inf * 0 would be NaN)."""
    lrn_kernel("fused")
    x = torch.ones(2, 7, 6, 6).contiguous(memory_format=torch.channels_last) * 10
    x[0, 6, 2, 3] = float("inf")  # the last channel of one pixel
    y = native.lrn_forward(x, 2, 2.0, 1e-4, 0.75)
    bad = ~torch.isfinite(y)
    assert bad.any() and bad.sum(dim=1).nonzero().tolist() == [[0, 2, 3]]  # only that pixel

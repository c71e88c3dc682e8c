"""The machine: which device (resolve_device), the precision context (autocast, the loss
scaler), and the process-wide allocator setting the CLI applies once (tune_allocator)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

import torch

from .errors import UserError

# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def tune_allocator() -> bool:
    """Keep freed tensor memory in the process instead of returning it to the kernel.

    PyTorch's CPU tensors come straight from malloc. glibc serves large blocks with mmap
    and unmaps them on free, so every training step page-faults its activations in anew:
    on the 2-core machine this was 10.7 s of system time in a 20 s run of 10,000
    Fashion-MNIST images, and the run took 12.3 s with this setting. Linux/glibc only;
    set ALEXNET_NO_MALLOPT=1 to leave the allocator alone (or preload jemalloc/tcmalloc).
    """
    if not sys.platform.startswith("linux") or os.environ.get("ALEXNET_NO_MALLOPT"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False


AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # config.AMP_MODES but "auto"


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def resolve_device(name: str) -> torch.device:
    """auto: CUDA if there is a GPU, else Apple's MPS if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"--device {name}: not a device (auto, cpu, cuda, cuda:N or mps)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "mps" and not mps_available():
        raise UserError(f"--device {name}: Apple MPS is not available on this machine")
    return device


# fp16 autocast with a loss scaler: CUDA only. On a CPU it overflowed where bf16 and fp32
# trained (a small photo folder reached NaN at step 6), and MPS is not measured by this
# version; bf16 has fp32's exponent range and needs no scaler.
FP16_DEVICES = ("cuda",)


def check_precision(amp: str, device: torch.device, what: str = "--amp fp16") -> None:
    """Refuse, in one line naming the alternatives, a precision this device does not run."""
    if amp == "fp16" and device.type not in FP16_DEVICES:
        raise UserError(
            f"{what}: fp16 with a loss scaler runs on CUDA only, not on {device.type}; "
            "use --amp bf16, --amp off (fp32) or --amp auto (the faster of the two, measured)"
        )


def stored_precision(amp: str, device: torch.device) -> str:
    """The precision to run a checkpoint in on `device`: its run's; fp32 for "auto" (a
    config saved before a run decided it) and for fp16 off CUDA (FP16_DEVICES)."""
    if amp == "auto" or (amp == "fp16" and device.type not in FP16_DEVICES):
        return "off"
    return amp


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[object]:
    """The one precision context of the project: autocast to bf16/fp16, or nothing (fp32)."""
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A loss scaler, active only for fp16 (bf16 has fp32's exponent range)."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


def restore_scaler(scaler: torch.amp.GradScaler, state: dict) -> None:
    """Continue a checkpoint's loss scaler. A checkpoint of a bf16 or fp32 run holds an empty
    state (its scaler was disabled): an fp16 run resumed from it starts a fresh scale, where
    load_state_dict would raise."""
    if state:
        scaler.load_state_dict(state)


def configure_cuda(tf32: bool, deterministic: bool) -> str:
    """The process-wide CUDA math settings of a run; returns the run header's line.

    cuDNN autotuning (cudnn.benchmark) picks the fastest convolution algorithms for the
    run's fixed shapes, unless determinism is asked. TF32 is on unless --no-tf32: torch's
    own default leaves cuDNN's convolutions in TF32 even in "fp32", which the paper recipe
    must not be. Deterministic: cuDNN's deterministic algorithms, torch's deterministic
    mode (warning where an operation has none) and cuBLAS's fixed workspace."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    on = lambda flag: "on" if flag else "off"  # noqa: E731
    return f"CUDA: TF32 {on(tf32)}, cudnn.benchmark {on(not deterministic)}, deterministic {on(deterministic)}"

"""The fused LRN kernel (lrn.c): built at run time with the machine's C compiler, loaded
with ctypes, run on the CPU's threads.

Why at run time: `-march=native` lets the compiler use what this CPU has (AVX-512 here,
NEON on Apple silicon), and a source file of plain C needs no torch headers, so it builds
in about 0.3 s and does not depend on torch's C++ ABI (the same build serves torch 2.11
and 2.14). The library is cached by a hash of the source, the compiler, its flags and the
CPU, in config.cache_dir()/kernels. Without a compiler (or where it fails, a full disk
included: the compiler's own line says so) the layer falls back to torch operations
(lrn.py) and `kernel_status()` says why, in the one line that says which LRN a run uses.
A build writes `.lrn-<key>.so.<random>.tmp` (and `.o.tmp`) beside its target and removes
them whatever happens; those a killed build left are removed by a later build of the key
once they are older than any build can last (other processes may be building it now).

Threads: on Linux the kernel is built with OpenMP and linked to the OpenMP runtime torch
loaded, so it runs on torch's own threads (_openmp_runtime says why). Elsewhere ctypes,
which releases the GIL during a call, runs shares of the rows on Python threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ..config import cache_dir
from .jsonio import temporary_files

SOURCE = Path(__file__).with_name("lrn.c")
# Flag sets tried in order; the first that builds is used. -march=native: this CPU's
# vector units; -mprefer-vector-width=512: gcc and clang use 256-bit vectors by default
# even on AVX-512 CPUs (512 made the kernel 1.1-1.6x faster on a Xeon with AVX-512);
# -fno-math-errno: lets sqrtf vectorise. The last set is plain portable C.
FLAG_SETS = (
    ("-O3", "-march=native", "-mprefer-vector-width=512", "-fno-math-errno"),
    ("-O3", "-march=native", "-fno-math-errno"),
    ("-O3", "-mcpu=native", "-fno-math-errno"),
    ("-O3", "-fno-math-errno"),
)
# Below this many values a call runs on the calling thread: handing work to a thread costs
# tens of microseconds, more than the kernel takes on a few images.
PARALLEL_MIN_VALUES = 1 << 16
BUILD_TIMEOUT_S = 120  # one compiler command
STALE_BUILD_S = 2 * BUILD_TIMEOUT_S  # a build is two commands at most: older temporary files are a killed one's

_lock = threading.Lock()
# the build, once per process: "lib" and "flags" and "openmp", or "error"; the Python
# threads' "pool" and its "pool_threads" where the kernel has no OpenMP
_state: dict[str, object] = {}


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU's feature flags (Linux), or its name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _openmp_runtime() -> str | None:
    """The OpenMP library torch loaded into this process (Linux), to link the kernel to it.

    Linking to that very file makes the kernel's parallel loops run on torch's own
    intra-op threads. A second OpenMP runtime, or Python threads, would compete with
    torch's threads, which spin for a while after each parallel operation: measured on a
    2-core machine, the kernel took twice as long inside a training step as alone.
    """
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        path = line.split()[-1] if line.split() else ""
        if path.startswith("/") and re.match(r"lib(gomp|iomp5|omp)[-.\w]*\.so", os.path.basename(path)):
            found.append(path)
    torch_dir = os.path.dirname(torch.__file__)
    found.sort(key=lambda path: not path.startswith(torch_dir))  # torch's own first, if another is loaded too
    return found[0] if found else None


def _compile(compiler: list[str], flags: tuple[str, ...], openmp: str | None, target: Path) -> str | None:
    """Build lrn.c into `target` (atomically: processes may build at once); None, or the error.
    With `openmp` (a runtime's path), compile with -fopenmp and link to that file only."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in temporary_files(target):  # left by a killed build, not one under way
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > STALE_BUILD_S:
                stale.unlink()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    obj = tmp[: -len(".tmp")] + ".o.tmp"
    if openmp:  # two steps: `cc -fopenmp` would also link the system's runtime
        commands = [
            [*compiler, *flags, "-fopenmp", "-fPIC", "-c", str(SOURCE), "-o", obj],
            [*compiler, "-shared", "-o", tmp, obj, openmp, "-lm"],
        ]
    else:
        commands = [[*compiler, *flags, "-shared", "-fPIC", "-o", tmp, str(SOURCE), "-lm"]]
    try:
        for command in commands:
            result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
            if result.returncode != 0:
                lines = (result.stderr or result.stdout).strip().splitlines()
                return lines[0] if lines else f"{compiler[0]} exited with {result.returncode}"
        os.replace(tmp, target)
        return None
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    finally:
        for path in (tmp, obj):
            if os.path.exists(path):
                os.unlink(path)


def _compiler() -> list[str] | None:
    """$CC (which may carry words: "ccache gcc"), else cc, gcc or clang on the PATH. None on
    Windows, where this build (a .so from cc flags) is not written for the toolchains."""
    if sys.platform == "win32":
        return None
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])
    found = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    return [found] if found else None


def _kernel_dir() -> Path:
    """config.cache_dir()/kernels, or a folder of the temporary directory where the cache
    cannot be written (a read-only home)."""
    for folder in (cache_dir() / "kernels", Path(tempfile.gettempdir()) / f"alexnet-kernels-{os.getuid()}"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            continue
    raise OSError(f"no writable folder for the kernel: {cache_dir() / 'kernels'}")


def _build() -> None:
    compiler = _compiler()
    if not compiler:
        _state["error"] = "no C compiler found (cc, gcc or clang; or set CC)"
        return
    name, runtime = Path(compiler[0]).name, _openmp_runtime()
    what = [SOURCE.read_text(), *compiler, _cpu_signature()]  # what every build's key shares
    errors = []
    for openmp in (runtime, None) if runtime else (None,):
        for flags in FLAG_SETS:
            key = "\0".join([*what, " ".join(flags), str(openmp)])
            try:
                target = _kernel_dir() / f"lrn-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
                error = None if target.is_file() else _compile(compiler, flags, openmp, target)
                if error is None:
                    _state["lib"] = _load(target)
                    _state["flags"] = f"{name} {' '.join(flags)}" + (" -fopenmp" if openmp else "")
                    _state["openmp"] = openmp is not None
                    return
            except OSError as e:  # no writable folder, a library that does not load
                error = str(e)
            errors.append(error)
    # the last attempt is the plainest (portable flags, no OpenMP): its error says the most
    _state["error"] = f"{name} could not build {SOURCE.name}: {errors[-1]}"


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    p, i, f = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    lib.lrn_forward.argtypes = [p, p, i, i, i, f, f, f, ctypes.c_int]
    lib.lrn_backward.argtypes = [p, p, p, i, i, i, f, f, f, ctypes.c_int]
    lib.lrn_forward.restype = lib.lrn_backward.restype = ctypes.c_int
    return lib


def library() -> ctypes.CDLL | None:
    """The built kernel, or None where it cannot be built (kernel_status says why)."""
    with _lock:
        if "lib" not in _state and "error" not in _state:
            _build()
        return _state.get("lib")  # type: ignore[return-value]


def kernel_status() -> str:
    """How the kernel was built, or why it was not."""
    return f"built with {_state['flags']}" if library() is not None else str(_state["error"])


def _run(fn: ctypes._CFuncPtr, tensors: list[torch.Tensor], rows: int, channels: int, *args: float) -> None:
    """fn(pointers..., rows, channels, *args) over the rows: one call where the kernel has
    OpenMP, else shares of the rows on Python threads."""
    threads = torch.get_num_threads()
    if _state.get("openmp") or rows * channels < PARALLEL_MIN_VALUES or threads == 1:
        parts = [(0, rows)]
    else:
        per = -(-rows // threads)
        parts = [(start, min(rows, start + per)) for start in range(0, rows, per)]
    item = tensors[0].element_size() * channels

    def call(part: tuple[int, int]) -> int:
        start, stop = part
        return fn(*(t.data_ptr() + start * item for t in tensors), stop - start, channels, *args)

    if len(parts) == 1:
        codes = [call(parts[0])]
    else:
        with _lock:
            if _state.get("pool_threads") != threads:
                _state["pool"] = ThreadPoolExecutor(threads, thread_name_prefix="alexnet-lrn")
                _state["pool_threads"] = threads
            pool: ThreadPoolExecutor = _state["pool"]  # type: ignore[assignment]
        futures = [pool.submit(call, part) for part in parts[1:]]
        codes = [call(parts[0])] + [f.result() for f in futures]  # this thread runs a share too
    if any(codes):
        raise MemoryError("the fused LRN kernel could not allocate its row buffers")


def _rows(x: torch.Tensor) -> tuple[int, int]:
    n, c, h, w = x.shape
    return n * h * w, c


DTYPES = (torch.float32, torch.bfloat16)  # what the kernel reads and writes


def lrn_forward(x: torch.Tensor, half: int, k: float, alpha: float, beta: float) -> torch.Tensor:
    """The LRN of a CPU tensor (N, C, H, W) of DTYPES, any layout; the result is channels_last."""
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.empty_like(x)
    _run(library().lrn_forward, [x, y], *_rows(x), half, k, alpha, beta, int(x.dtype == torch.bfloat16))
    return y


def lrn_backward(
    x: torch.Tensor, grad_out: torch.Tensor, half: int, k: float, alpha: float, beta: float
) -> torch.Tensor:
    """The input's gradient, from the input and the output's gradient (channels_last, x's type)."""
    x = x.contiguous(memory_format=torch.channels_last)
    g = grad_out.to(x.dtype).contiguous(memory_format=torch.channels_last)
    grad = torch.empty_like(x)
    _run(library().lrn_backward, [x, g, grad], *_rows(x), half, k, alpha, beta, int(x.dtype == torch.bfloat16))
    return grad

"""Training-set statistics from one streaming pass: the per-pixel mean image (§2) and the
eigen-decomposition of the RGB covariance for PCA lighting (§4.1).

The mean image is cached next to the data (DATA/.alexnet-mean-<resize>.safetensors) or,
where that folder is read-only, in the run directory, keyed by a fingerprint of the file
list so that a changed training set is noticed; checkpoints carry it too. A cache that
cannot be written in either place (read-only, or no room: a full disk) is not an error: the
run warns in one line and goes on with the mean image it computed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import safe_open, save_file
from tqdm import tqdm

from ..config import DataConfig, cache_dir
from ..run.distributed import Dist, all_sum, any_flag, broadcast_tensor, sum_tensor
from ..run.errors import DiskFull
from ..run.jsonio import atomic_write
from .datasets import Split, is_fashion_mnist

if TYPE_CHECKING:
    from collections.abc import Callable

CPU = torch.device("cpu")


def mean_image(split: Split, shape: tuple[int, ...], device: torch.device = CPU, d: Dist = Dist()) -> torch.Tensor:
    """The mean of every image of an ordered split, float32 `shape` (C, H, W) in 0..255 units.
    Under torchrun each process sums its share of the images (the split's own sharding) and
    the sums are added up: float64 sums of uint8 pixels are exact, so the mean is the one a
    single process computes, bit for bit."""
    total = torch.zeros(shape, dtype=torch.float64)
    count = 0
    for images, _ in tqdm(split.loader, desc="mean image", leave=False, dynamic_ncols=True, disable=not d.main):
        total += images.to(torch.float64).sum(0)
        count += images.shape[0]
    total = sum_tensor(total, device, d)
    count = int(all_sum([float(count)], device, d)[0])
    if not count:
        raise ValueError("cannot take the mean of no images")
    return (total / count).float()


def _cache_paths(cfg: DataConfig, run_dir: Path) -> list[Path]:
    name = f".alexnet-mean-{cfg.resize}.safetensors"
    home = cache_dir() / "fashion-mnist" if is_fashion_mnist(cfg) else Path(cfg.name)
    return [home / name, Path(run_dir) / name.lstrip(".")]


def _cached(paths: list[Path], fingerprint: str) -> torch.Tensor | None:
    for path in paths:
        if path.is_file():
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("fingerprint") == fingerprint:
                    return f.get_tensor("mean_image")
    return None


def cached_mean_image(
    cfg: DataConfig,
    split: Split,
    run_dir: Path,
    log: Callable[[str], None] = print,
    device: torch.device = CPU,
    d: Dist = Dist(),
) -> torch.Tensor:
    """The split's mean image from the cache if it matches the split, else computed (by every
    process on its share, `split` being this process's) and cached by the main process."""
    paths = _cache_paths(cfg, run_dir)
    shape = (cfg.channels, cfg.resize, cfg.resize)
    image = _cached(paths, split.fingerprint) if d.main else None
    if any_flag(image is not None, device, d):  # the main process found it: sent to all
        return broadcast_tensor(image, shape, device, d)
    processes = f"; {d.world} processes, a share each" if d.enabled else ""
    log(f"alexnet: computing the mean image of {split.size:,} training images (once{processes})")
    image = mean_image(split, shape, device, d)
    if d.main:
        _write_cache(paths, image, split.fingerprint, log)
    return image


def _write_cache(paths: list[Path], image: torch.Tensor, fingerprint: str, log: Callable[[str], None]) -> None:
    """The mean image to the first of `paths` that takes it (next to the data if writable,
    else the run directory); where none does, a one-line warning."""
    errors = []
    for path in paths:
        try:
            atomic_write(
                path,
                lambda tmp: save_file({"mean_image": image}, tmp, metadata={"fingerprint": fingerprint}),
                sweep=True,
            )
            return
        except (OSError, DiskFull) as e:
            errors.append(str(e) if isinstance(e, DiskFull) else f"{path}: {e.strerror or e}")
    log(f"alexnet: warning: the mean image is not cached ({'; '.join(errors)}); it is computed again next run")


def rgb_pca(split: Split) -> tuple[list[float], list[list[float]]]:
    """Eigenvalues (descending) and eigenvectors (columns) of the 3x3 covariance of the RGB
    values of every pixel of an ordered split, for RGB in [0, 1] as in docs/PAPER.md."""
    s1 = torch.zeros(3, dtype=torch.float64)
    s2 = torch.zeros(3, 3, dtype=torch.float64)
    n = 0
    for images, _ in tqdm(split.loader, desc="RGB covariance", leave=False, dynamic_ncols=True):
        if images.shape[1] != 3:
            raise ValueError("PCA lighting needs RGB images")
        px = images.permute(0, 2, 3, 1).reshape(-1, 3).to(torch.float64) / 255.0
        s1 += px.sum(0)
        s2 += px.T @ px
        n += px.shape[0]
    mean = s1 / n
    cov = s2 / n - torch.outer(mean, mean)
    eigval, eigvec = torch.linalg.eigh(cov)  # ascending
    order = eigval.argsort(descending=True)
    return eigval[order].tolist(), eigvec[:, order].tolist()

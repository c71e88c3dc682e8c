"""Device-side preprocessing: uint8 batches in, the model's float input out.

Loaders ship uint8 images at the data's stored size (the central 256x256 patch of §2
for image folders, 28x28 for Fashion-MNIST). Here, on whatever device trains:

    float -> subtract the mean (per-pixel image or per-channel, §2) -> PCA lighting (§4.1,
    training) -> divide by std (1 for the paper) -> random crop + mirror (§4.1, training)
    or the centre crop (evaluation) -> resize if the model wants another size

Why by hand: transforms v2 draws one set of random parameters per call, so applied to a
batch it would crop, mirror and light every image the same way; and torchvision has no
PCA lighting. Here every image gets its own crop, mirror and lighting, in a few batched
tensor operations, drawing from the device's global RNG. Training reseeds it at every step
from (seed, epoch, step, rank) (engine.step_seed), so no RNG state is saved in checkpoints
and a run resumed with the same number of processes and batch draws the same crops,
mirrors and lighting.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from ..config import DataConfig


class Crops(NamedTuple):
    """Per image: the top-left corner of a size x size crop and whether it is mirrored."""

    top: torch.Tensor  # (N,) int64
    left: torch.Tensor  # (N,) int64
    flip: torch.Tensor  # (N,) bool
    size: int


def random_crops(n: int, h: int, w: int, size: int, device: torch.device | str) -> Crops:
    """Random size x size crops of h x w images, each mirrored with p = 0.5 (§4.1)."""
    if size > min(h, w):
        raise ValueError(f"crop {size} is larger than the {h}x{w} images")
    top = torch.randint(0, h - size + 1, (n,), device=device)
    left = torch.randint(0, w - size + 1, (n,), device=device)
    return Crops(top, left, torch.rand(n, device=device) < 0.5, size)


def cut(x: torch.Tensor, crops: Crops) -> torch.Tensor:
    """The crops of x (N, C, H, W), as a channels_last (N, C, size, size) tensor of x's dtype.
    A single image (batch 1, e.g. the mean image) is cut once per crop.

    On a GPU: one advanced-indexing gather (one kernel). On the CPU, a loop of slice
    copies is 4x faster than that gather (no kernel launches to save, and the index
    arithmetic per pixel is what costs); both move the same bytes to the same places.
    """
    if crops.size == x.shape[-2] == x.shape[-1] and x.shape[0] == crops.flip.shape[0]:
        return _mirror_only(x, crops)
    return (_cut_by_slices if x.device.type == "cpu" else _cut_by_gather)(x, crops)


def _mirror_only(x: torch.Tensor, crops: Crops) -> torch.Tensor:
    """Crops the size of the image (Fashion-MNIST's 28 of 28): only the mirrors remain, two
    whole-batch operations instead of a copy per image (2.2 -> 0.5 ms a batch of 128)."""
    out = torch.where(crops.flip[:, None, None, None], x.flip(-1), x)
    return out.contiguous(memory_format=torch.channels_last)


def _cut_by_slices(x: torch.Tensor, crops: Crops) -> torch.Tensor:
    nhwc, size = x.permute(0, 2, 3, 1), crops.size
    out = x.new_empty(crops.top.shape[0], size, size, x.shape[1])
    for i, (t, left, f) in enumerate(zip(crops.top.tolist(), crops.left.tolist(), crops.flip.tolist())):
        patch = nhwc[i if x.shape[0] > 1 else 0, t : t + size, left : left + size]
        out[i].copy_(patch.flip(1) if f else patch)
    return out.permute(0, 3, 1, 2)


def _cut_by_gather(x: torch.Tensor, crops: Crops) -> torch.Tensor:
    ar = torch.arange(crops.size, device=x.device)
    rows = crops.top[:, None] + ar
    cols = crops.left[:, None] + torch.where(crops.flip[:, None], ar.flip(0), ar)  # reversed when mirrored
    batch = torch.arange(rows.shape[0], device=x.device) if x.shape[0] > 1 else torch.zeros_like(crops.top)
    return x.permute(0, 2, 3, 1)[batch[:, None, None], rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_crop_flip(x: torch.Tensor, size: int, pad: int = 0) -> torch.Tensor:
    """Per image: a random size x size crop (after zero-padding by `pad`) mirrored with p = 0.5.

    §4.1: random 227 patches of the 256 image and their horizontal reflections. With
    size equal to the image size, `pad` gives random shifts of up to `pad` pixels instead.
    x: (N, C, H, W), any dtype; returns a channels_last tensor of the same dtype.
    """
    if pad:
        x = F.pad(x, (pad, pad, pad, pad))
    n, _, h, w = x.shape
    return cut(x, random_crops(n, h, w, size, x.device))


def pca_lighting(n: int, eigval: torch.Tensor, eigvec: torch.Tensor, alpha_std: float) -> torch.Tensor:
    """§4.1: one RGB shift per image, sum_i p_i * alpha_i * lambda_i with alpha_i ~ N(0, alpha_std).

    eigvec holds the eigenvectors p_i as columns; returns (n, 3) in eigval's units.
    """
    alpha = torch.randn(n, eigval.numel(), device=eigval.device) * alpha_std
    return (alpha * eigval) @ eigvec.T


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if h == size and w == size:
        return x
    return TF.center_crop(x, [size, size])


class Preprocess:
    """uint8 (N, C, H, W) on the device -> float model input; see the module docstring."""

    PIXEL = 255.0  # the PCA eigenvalues are for RGB in [0, 1]; pixels here are 0..255

    def __init__(
        self,
        data: DataConfig,
        input_size: int,
        device: torch.device,
        channels_last: bool = True,
        mean_image: torch.Tensor | None = None,
    ) -> None:
        c = data.channels
        if mean_image is not None:  # (1, C, H, W): per pixel (§2)
            self.mean = mean_image.to(device, torch.float32).view(1, c, *mean_image.shape[-2:])
        else:  # (1, C, 1, 1): per channel
            self.mean = torch.tensor(data.mean, device=device, dtype=torch.float32).view(1, c, 1, 1)
        self.inv_std = 1.0 / torch.tensor(data.std, device=device, dtype=torch.float32).view(1, c, 1, 1)
        self.input_size = input_size
        self.augment, self.translate = data.augment, data.translate
        self.lighting = data.lighting if c == 3 else 0.0  # PCA lighting is for RGB only
        self.eigval = torch.tensor(data.pca_eigval, device=device) * self.PIXEL
        self.eigvec = torch.tensor(data.pca_eigvec, device=device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def lighting_shift(self, n: int, train: bool) -> torch.Tensor | None:
        """(n, C, 1, 1) PCA lighting shifts for a training batch, else None."""
        if not (train and self.augment and self.lighting > 0):
            return None
        return pca_lighting(n, self.eigval, self.eigvec, self.lighting)[:, :, None, None]

    def normalise(self, x: torch.Tensor, mean: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
        """Float, mean subtracted, lit (if shift), divided by std; one new tensor, in place after."""
        x = x.to(torch.float32, copy=True).sub_(mean)  # a copy even of float input: never the caller's
        if shift is not None:
            x.add_(shift)
        return x.mul_(self.inv_std)

    def crop_size(self, x: torch.Tensor) -> int:
        return min(self.input_size, *x.shape[-2:])

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """Resize to the model's input if the data is smaller, and set the memory layout."""
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = TF.resize(x, [self.input_size, self.input_size], antialias=True)
        return x.contiguous(memory_format=self.memory_format)

    def __call__(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        """Crops are cut from the uint8 batch (and the mean image) before any float work:
        a 227 crop is 79% of a 256 image, and uint8 is a quarter of float's bytes."""
        size, per_pixel = self.crop_size(x), self.mean.shape[-1] > 1
        shift = self.lighting_shift(x.shape[0], train)  # drawn before the crops
        if train and self.augment and self.translate and size == x.shape[-1]:
            # random shifts pad with zeros after normalisation (the mean colour), so crop last
            return self.finish(random_crop_flip(self.normalise(x, self.mean, shift), size, self.translate))
        if train and self.augment:
            crops = random_crops(x.shape[0], *x.shape[-2:], size, x.device)
            x, mean = cut(x, crops), cut(self.mean, crops) if per_pixel else self.mean
        else:
            x, mean = center_crop(x, size), center_crop(self.mean, size) if per_pixel else self.mean
        return self.finish(self.normalise(x, mean, shift))

    def views(self, x: torch.Tensor, mirror: bool = False) -> list[torch.Tensor]:
        """The centre patch, and with `mirror` its horizontal reflection too (§4.1)."""
        centre = self(x, train=False)
        return [centre, centre.flip(-1).contiguous(memory_format=self.memory_format)] if mirror else [centre]

    def ten_crop(self, x: torch.Tensor) -> list[torch.Tensor]:
        """§4.1 test: the four corner and the centre patches and their mirrors (10 inputs)."""
        x = self.normalise(x, self.mean, None)
        return [self.finish(v) for v in TF.ten_crop(x, [self.crop_size(x)] * 2)]

"""Device-side preprocessing: uint8 batches in, the model's float input out.

Loaders ship uint8 images at the data's stored size (the central 256x256 patch of §2
for image folders, 28x28 for Fashion-MNIST). Here, on whatever device trains:

    float -> subtract the mean (per-pixel image or per-channel, §2) -> PCA lighting (§4.1,
    training) -> divide by std (1 for the paper) -> random crop + mirror (§4.1, training)
    or the centre crop (evaluation) -> resize if the model wants another size

Why by hand: transforms v2 draws one set of random parameters per call, so applied to a
batch it would crop, mirror and light every image the same way; and torchvision has no
PCA lighting. Here every image gets its own crop, mirror and lighting, in a few batched
tensor operations, drawing from the device's global RNG (saved in checkpoints).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from .config import DataConfig


def random_crop_flip(x: torch.Tensor, size: int, pad: int = 0) -> torch.Tensor:
    """Per image: a random size x size crop (after zero-padding by `pad`) mirrored with p = 0.5.

    §4.1: random 227 patches of the 256 image and their horizontal reflections. With
    size equal to the image size, `pad` gives random shifts of up to `pad` pixels instead.
    x: (N, C, H, W), any dtype; returns a channels_last view of the same dtype.
    """
    n, _, h, w = x.shape
    dev = x.device
    if pad:
        x = F.pad(x, (pad, pad, pad, pad))
        h, w = h + 2 * pad, w + 2 * pad
    if size > min(h, w):
        raise ValueError(f"crop {size} is larger than the {h}x{w} images")
    oy = torch.randint(0, h - size + 1, (n, 1), device=dev)
    ox = torch.randint(0, w - size + 1, (n, 1), device=dev)
    flip = torch.rand(n, 1, device=dev) < 0.5
    ar = torch.arange(size, device=dev)
    rows = oy + ar                                   # (N, size)
    cols = ox + torch.where(flip, ar.flip(0), ar)    # (N, size), reversed when mirrored
    nhwc = x.permute(0, 2, 3, 1)
    out = nhwc[torch.arange(n, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


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

    def __init__(self, data: DataConfig, input_size: int, device: torch.device,
                 channels_last: bool = True, mean_image: torch.Tensor | None = None):
        c = data.channels
        self.mean = (mean_image.to(device, torch.float32) if mean_image is not None else
                     torch.tensor(data.mean, device=device, dtype=torch.float32).view(1, c, 1, 1))
        self.inv_std = 1.0 / torch.tensor(data.std, device=device, dtype=torch.float32).view(1, c, 1, 1)
        self.input_size = input_size
        self.augment, self.translate = data.augment, data.translate
        self.lighting = data.lighting if c == 3 else 0.0  # PCA lighting is for RGB only
        self.eigval = torch.tensor(data.pca_eigval, device=device) * self.PIXEL
        self.eigvec = torch.tensor(data.pca_eigvec, device=device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def normalise(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """Float, mean subtracted, lit (training), divided by std; the stored size."""
        x = x.float() - self.mean
        if train and self.augment and self.lighting > 0:
            shift = pca_lighting(x.shape[0], self.eigval, self.eigvec, self.lighting)
            x = x + shift[:, :, None, None]
        return x * self.inv_std

    def crop_size(self, x: torch.Tensor) -> int:
        return min(self.input_size, *x.shape[-2:])

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """Resize to the model's input if the data is smaller, and set the memory layout."""
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = TF.resize(x, [self.input_size, self.input_size], antialias=True)
        return x.contiguous(memory_format=self.memory_format)

    def __call__(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        x = self.normalise(x, train)
        size = self.crop_size(x)
        if train and self.augment:
            x = random_crop_flip(x, size, self.translate if size == x.shape[-1] else 0)
        else:
            x = center_crop(x, size)
        return self.finish(x)

    def ten_crop(self, x: torch.Tensor) -> list[torch.Tensor]:
        """§4.1 test: the four corner and the centre patches and their mirrors (10 inputs)."""
        x = self.normalise(x, train=False)
        return [self.finish(v) for v in TF.ten_crop(x, [self.crop_size(x)] * 2)]

"""Device-side preprocessing of uint8 batches: augmentation for in-memory data, then
conversion to the model's float input.

Why by hand: transforms v2 draws one set of random parameters per call, so applied to a
batch it would crop and mirror every image the same way. Here every image gets its own
crop offset and mirror, in one gather on whatever device the batch is on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF


def random_crop_flip(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Per image: translate by up to `pad` pixels (zero fill) and mirror with p = 0.5.

    The small-image counterpart of §4.1's random 227 crops of the 256 image and their
    horizontal reflections. x: (N, C, H, W) of any dtype; draws from the global RNG of
    x's device, so a checkpoint's RNG state reproduces it.
    """
    n, _, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    oy = torch.randint(0, 2 * pad + 1, (n, 1), device=dev)
    ox = torch.randint(0, 2 * pad + 1, (n, 1), device=dev)
    flip = torch.rand(n, 1, device=dev) < 0.5
    ar_h, ar_w = torch.arange(h, device=dev), torch.arange(w, device=dev)
    rows = oy + ar_h                                     # (N, H)
    cols = ox + torch.where(flip, ar_w.flip(0), ar_w)    # (N, W), reversed when mirrored
    nhwc = padded.permute(0, 2, 3, 1)
    out = nhwc[torch.arange(n, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)  # (N, C, H, W) view with channels_last memory


class Preprocess:
    """uint8 (N, C, H, W) on the device -> float model input: resize, subtract mean, divide std."""

    def __init__(self, mean, std, input_size: int, device: torch.device,
                 channels_last: bool, augment: bool = False, translate: int = 0):
        self.mean = torch.tensor(mean, device=device, dtype=torch.float32).view(1, -1, 1, 1)
        self.inv_std = 1.0 / torch.tensor(std, device=device, dtype=torch.float32).view(1, -1, 1, 1)
        self.input_size = input_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.augment, self.translate = augment, translate

    def __call__(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        if train and self.augment:
            x = random_crop_flip(x, self.translate)
        x = (x.float() - self.mean) * self.inv_std
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = TF.resize(x, [self.input_size, self.input_size], antialias=True)
        return x.contiguous(memory_format=self.memory_format)

import torch

from alexnet.augment import Preprocess, random_crop_flip


def test_each_image_is_a_translated_or_mirrored_crop():
    torch.manual_seed(0)
    x = torch.randint(1, 256, (64, 1, 10, 10), dtype=torch.uint8)
    pad = 2
    y = random_crop_flip(x, pad)
    assert y.shape == x.shape and y.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    flips = 0
    for i in range(len(x)):
        matches = [(dy, dx, f) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for f in (0, 1)
                   if torch.equal(y[i], (lambda c: c.flip(-1) if f else c)(padded[i, :, dy:dy + 10, dx:dx + 10]))]
        assert matches, f"image {i} is not a crop of its padded original"
        flips += matches[0][2]
    assert 16 < flips < 48  # mirrored with p = 0.5


def test_offsets_vary_per_image():
    torch.manual_seed(0)
    x = torch.arange(100, dtype=torch.float32).view(1, 1, 10, 10).repeat(32, 1, 1, 1)
    y = random_crop_flip(x, 2)
    assert len({tuple(img.flatten().tolist()) for img in y}) > 10


def test_preprocess_normalises_and_resizes():
    x = torch.full((2, 1, 28, 28), 100, dtype=torch.uint8)
    p = Preprocess((50.0,), (25.0,), 32, torch.device("cpu"), channels_last=True)
    y = p(x)
    assert y.shape == (2, 1, 32, 32) and y.dtype == torch.float32
    torch.testing.assert_close(y, torch.full_like(y, 2.0))
    assert y.is_contiguous(memory_format=torch.channels_last)

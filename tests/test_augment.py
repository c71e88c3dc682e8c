import pytest
import torch

from alexnet.config import DataConfig
from alexnet.core.augment import (
    Preprocess,
    _cut_by_gather,
    _cut_by_slices,
    cut,
    pca_lighting,
    random_crop_flip,
    random_crops,
)


def _matches(out, src, size):
    """(top, left, mirrored) of every placement of `out` in `src`."""
    h, w = src.shape[-2:]
    return [
        (t, left, f)
        for t in range(h - size + 1)
        for left in range(w - size + 1)
        for f in (0, 1)
        if torch.equal(out, (lambda c: c.flip(-1) if f else c)(src[..., t : t + size, left : left + size]))
    ]


def test_shifts_are_crops_of_the_padded_image_and_half_are_mirrored():
    torch.manual_seed(0)
    x = torch.randint(1, 256, (64, 1, 10, 10), dtype=torch.uint8)
    y = random_crop_flip(x, 10, pad=2)
    assert y.shape == x.shape and y.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (2,) * 4)
    flips = 0
    for i in range(len(x)):
        m = _matches(y[i], padded[i], 10)
        assert m, f"image {i} is not a crop of its padded original"
        flips += m[0][2]
    assert 16 < flips < 48  # mirrored with p = 0.5


def test_random_crops_of_larger_images_cover_every_offset():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (400, 3, 12, 12), dtype=torch.uint8)
    y = random_crop_flip(x, 9)
    assert y.shape == (400, 3, 9, 9)
    offsets = set()
    for i in range(len(x)):
        m = _matches(y[i], x[i], 9)
        assert m
        offsets.add(m[0][:2])
    assert offsets == {(t, left) for t in range(4) for left in range(4)}  # 256-227 in miniature


def test_pca_lighting_has_the_expected_covariance():
    # §4.1: shift = P (alpha * lambda), alpha ~ N(0, sigma^2) => Cov = P diag(sigma^2 lambda^2) P^T
    torch.manual_seed(0)
    cfg = DataConfig()
    eigval, eigvec = torch.tensor(cfg.pca_eigval), torch.tensor(cfg.pca_eigvec)
    shifts = pca_lighting(200_000, eigval, eigvec, 0.1)
    expected = eigvec @ torch.diag((0.1 * eigval) ** 2) @ eigvec.T
    cov = torch.cov(shifts.T)
    torch.testing.assert_close(cov, expected, atol=3e-5, rtol=0.02)
    assert shifts.mean(0).abs().max() < 1e-3


def test_preprocess_lights_each_image_by_one_rgb_shift():
    torch.manual_seed(0)
    cfg = DataConfig(mean=(0.0, 0.0, 0.0), augment=True, lighting=0.1)
    p = Preprocess(cfg, 8, torch.device("cpu"))
    x = torch.full((5, 3, 8, 8), 100, dtype=torch.uint8)  # crop = whole image, mirrors invisible
    y = p(x, train=True)
    shift = y - 100
    assert shift.std(dim=(2, 3)).max() < 1e-4  # constant over each image's pixels
    assert shift.mean(dim=(2, 3)).abs().max() > 0.1  # and not zero (in 0..255 units)
    assert torch.equal(p(x, train=False), torch.full((5, 3, 8, 8), 100.0))  # no lighting at test


def test_preprocess_mean_image_then_centre_crop():
    mean = torch.arange(16.0).view(1, 4, 4)
    cfg = DataConfig(mean=(0.0,), std=(2.0,), mean_image=True)
    p = Preprocess(cfg, 2, torch.device("cpu"), mean_image=mean)
    x = torch.full((1, 1, 4, 4), 20, dtype=torch.uint8)
    y = p(x)
    torch.testing.assert_close(y, ((20 - mean) / 2)[..., 1:3, 1:3].unsqueeze(0))
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_ten_crop_boxes_are_corners_centre_and_mirrors():
    cfg = DataConfig(mean=(0.0,), std=(1.0,))
    p = Preprocess(cfg, 227, torch.device("cpu"))
    x = torch.arange(256 * 256, dtype=torch.float64).view(1, 1, 256, 256)  # positions as values
    views = p.ten_crop(x)
    assert len(views) == 10
    boxes = [(0, 0), (0, 29), (29, 0), (29, 29), (14, 14)]  # 256 - 227 = 29; centre at 14
    for i, (top, left) in enumerate(boxes):
        expected = x[..., top : top + 227, left : left + 227].float()
        torch.testing.assert_close(views[i], expected)
        torch.testing.assert_close(views[i + 5], x.flip(-1)[..., top : top + 227, left : left + 227].float())


def test_small_data_is_resized_to_the_model_input():
    p = Preprocess(DataConfig(mean=(0.0,), std=(1.0,)), 32, torch.device("cpu"))
    y = p(torch.full((2, 1, 28, 28), 7, dtype=torch.uint8))
    assert y.shape == (2, 1, 32, 32)
    torch.testing.assert_close(y, torch.full_like(y, 7.0))


def test_crop_larger_than_image_is_an_error():
    with pytest.raises(ValueError, match="larger"):
        random_crop_flip(torch.zeros(1, 1, 4, 4), 5)


@pytest.mark.parametrize("batch", [7, 1])  # a batch, and one image (the mean image) cut 7 times
def test_cpu_slices_and_device_gather_cut_the_same_crops(batch):
    """The CPU cuts crops with a loop of slices, other devices with one gather: same bytes."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 16, 13)
    crops = random_crops(7, 16, 13, 11, "cpu")
    a, b = _cut_by_slices(x, crops), _cut_by_gather(x, crops)
    assert a.shape == b.shape == (7, 3, 11, 11) and torch.equal(a, b)
    assert a.is_contiguous(memory_format=torch.channels_last)
    assert crops.flip.any() and not crops.flip.all()


def test_whole_image_crops_are_the_mirrors_alone():
    """Crops the size of the image take the batched mirror path: the same bytes as a cut."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (9, 1, 12, 12), dtype=torch.uint8)
    crops = random_crops(9, 12, 12, 12, "cpu")
    a, b = cut(x, crops), _cut_by_gather(x, crops)
    assert torch.equal(a, b) and a.dtype == torch.uint8
    assert torch.equal(a[crops.flip], x[crops.flip].flip(-1)) and torch.equal(a[~crops.flip], x[~crops.flip])
    assert crops.flip.any() and not crops.flip.all()


def test_float_input_is_not_modified():
    cfg = DataConfig(mean=(10.0,), std=(2.0,))
    x = torch.full((2, 1, 8, 8), 30.0)
    for train in (True, False):
        y = Preprocess(cfg, 6, torch.device("cpu"))(x, train=train)
        assert torch.equal(x, torch.full((2, 1, 8, 8), 30.0)) and torch.allclose(y, torch.full_like(y, 10.0))

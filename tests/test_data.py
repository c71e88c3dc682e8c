import dataclasses

import numpy as np
import pytest
import torch

from alexnet.config import DataConfig
from alexnet.data.datasets import fashion_mnist, load_image, load_split, write_samples
from alexnet.data.loaders import InMemoryLoader, ShardedBatches
from alexnet.run.distributed import Dist
from alexnet.run.errors import UserError


def test_fashion_mnist_from_the_debian_files(fashion_dir):
    cfg = DataConfig(data_dir=fashion_dir)
    train, test = fashion_mnist(True, cfg), fashion_mnist(False, cfg)
    assert train.data.shape == (60000, 28, 28) and test.data.shape == (10000, 28, 28)
    assert train.data.dtype == torch.uint8
    assert train.classes[:2] == ["T-shirt/top", "Trouser"] and len(train.classes) == 10
    assert torch.bincount(test.targets).tolist() == [1000] * 10


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        fashion_mnist(True, DataConfig(data_dir=str(tmp_path / "nope")))
    with pytest.raises(UserError, match="dataset-fashion-mnist"):
        fashion_mnist(True, DataConfig(data_dir=str(tmp_path)))


def test_in_memory_loader_shuffles_per_epoch_and_is_deterministic():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    labels = torch.arange(10)
    loader = InMemoryLoader(images, labels, ShardedBatches(10, 4, Dist(), shuffle=True, seed=1))
    assert len(loader) == 2  # the last partial batch is dropped in training
    first = [b[1].tolist() for b in loader]
    assert [b[1].tolist() for b in loader] == first
    loader.set_epoch(1)
    assert [b[1].tolist() for b in loader] != first
    for x, y in loader:
        assert torch.equal(x.flatten().long(), y)
    loader.set_epoch(0, start=1)  # a mid-epoch resume skips the batches already seen
    assert [b[1].tolist() for b in loader] == first[1:]
    ordered = InMemoryLoader(images, labels, ShardedBatches(10, 4, Dist(), shuffle=False))
    assert len(ordered) == 3 and torch.cat([y for _, y in ordered]).tolist() == list(range(10))


def test_shards_add_up_to_the_single_process_batches():
    one = list(ShardedBatches(50, 8, Dist(), shuffle=True, seed=3))
    shards = [list(ShardedBatches(50, 8, Dist(rank=r, world=2), shuffle=True, seed=3)) for r in (0, 1)]
    assert len(one) == len(shards[0]) == len(shards[1]) == 6
    for i, batch in enumerate(one):
        assert shards[0][i] + shards[1][i] == batch  # same global batch, split in halves
    with pytest.raises(UserError, match="divide"):
        ShardedBatches(50, 9, Dist(rank=0, world=2), shuffle=True)


def test_evaluation_shards_cover_every_image_once():
    n = 11
    seen = [i for r in range(3) for b in ShardedBatches(n, 6, Dist(rank=r, world=3), shuffle=False) for i in b]
    assert sorted(seen) == list(range(n))  # no padding, no duplicates


def test_samples_are_the_test_images(fashion_dir, tmp_path):
    paths = write_samples(DataConfig(data_dir=fashion_dir), 3, tmp_path)
    test = fashion_mnist(False, DataConfig(data_dir=fashion_dir))
    assert [p.name.split("_", 1)[0] for p in paths] == ["00000", "00001", "00002"]
    for i, p in enumerate(paths):
        img = load_image(p, channels=1)
        assert torch.equal(torch.from_numpy(np.array(img)), test.data[i])


def test_load_image_converts_modes(photos):
    for path in photos.values():
        assert load_image(path, 3).mode == "RGB"
        assert load_image(path, 1).mode == "L"


@pytest.mark.parametrize("content", [b"", b"this is not an image", b"\xff\xd8\xff\xe0" + b"\x00" * 20])
def test_load_image_rejects_non_images(tmp_path, content):
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(UserError, match="bad.jpg"):
        load_image(p, 3)


def test_load_image_missing_and_directory(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_image(tmp_path / "missing.png", 3)
    with pytest.raises(UserError, match="not a file"):
        load_image(tmp_path, 3)


@pytest.mark.parametrize("size, scale", [((1100, 1030), 4), ((600, 520), 2), ((500, 375), 1)])
def test_draft_decodes_large_jpegs_at_reduced_size(tmp_path, size, scale):
    """Training decodes a JPEG at 1/2, 1/4 or 1/8 size while both sides stay >= the resize
    (libjpeg's DCT scaling); after the resize to 256 it is the full decode up to filtering.
    500x375 (ImageNet's most common size) is decoded whole."""
    from PIL import Image
    from skimage import data as skdata

    from alexnet.data.datasets import stored_transform

    path = tmp_path / "big.jpg"
    Image.fromarray(skdata.astronaut()).resize(size).save(path, quality=95)
    full, small = load_image(path, 3), load_image(path, 3, draft=256)
    assert full.size == size
    assert small.size == tuple(-(-s // scale) for s in size) and min(small.size) >= 256
    a, b = (stored_transform(256)(img).float() for img in (full, small))
    assert a.shape == b.shape == (3, 256, 256)
    # the same picture: no colour or brightness shift, detail in the same places (a shift
    # of half a pixel from resampling 275 -> 273 still moves sharp edges a little)
    assert abs((a - b).mean()) < 0.5
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.98  # 0.989 at 1/4


def test_default_workers_share_the_cores_among_torchrun_processes(monkeypatch):
    import os

    from alexnet.data.loaders import default_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers() == 15
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert default_workers() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_workers() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert default_workers() == 1


def test_batches_made_ahead_arrive_in_order_and_errors_reach_the_consumer():
    from alexnet.data.loaders import ahead

    assert list(ahead(iter(range(10)), 2)) == list(range(10))

    def failing():
        yield 1
        raise ValueError("unreadable")

    it = ahead(failing(), 2)
    assert next(it) == 1
    with pytest.raises(ValueError, match="unreadable"):
        next(it)
    made = []

    def counted():
        for i in range(1000):
            made.append(i)
            yield i

    first = ahead(counted(), 2)
    assert next(first) == 0
    first.close()  # a consumer that stops early stops the thread: it makes at most a few more
    import time

    time.sleep(0.3)
    assert len(made) < 10


def test_loaders_pin_only_when_asked(fashion_dir):
    """Pinning opens a CUDA context: a CPU run never pins (pin() is for CUDA runs)."""
    from alexnet.config import DataConfig
    from alexnet.data.datasets import load_split

    split = load_split(True, DataConfig(data_dir=fashion_dir, limit_train=64), 32)
    assert not split.loader.pinned
    x, _ = next(iter(split.loader))
    assert not x.is_pinned()


def test_load_split_takes_its_limits_from_the_config(fashion_dir):
    cfg = DataConfig(data_dir=fashion_dir, limit_train=96, limit_val=40)
    assert load_split(True, cfg, 32).size == 96 and load_split(False, cfg, 32).size == 40
    assert load_split(False, dataclasses.replace(cfg, limit_val=None), 32).size == 10_000  # the whole test set


def test_a_folder_smaller_than_one_batch_is_refused_with_a_batch_that_fits(photo_folder, tmp_path, cli, one_line_error):
    """24 photos at the folder recipe's batch of 128: no full batch, so no step; the run says
    so in one line before it measures anything, with a batch that gives a few steps."""
    rc, out, err = cli("train", "--data", photo_folder, "--out", tmp_path / "out", "--epochs", "1")
    line = one_line_error(rc, err, photo_folder, "24 training images", "--batch-size 128", "--batch-size 4")
    assert "6 steps an epoch" in line
    assert not (tmp_path / "out" / "last.pt").exists()

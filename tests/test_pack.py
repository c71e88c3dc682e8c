"""A packed store holds exactly what the folder's loader gives, and trains the same."""

import json

import pytest
import torch

from alexnet.apps.cli import main
from alexnet.config import DataConfig
from alexnet.data.datasets import load_split
from alexnet.data.pack import pack
from alexnet.run.errors import UserError


@pytest.fixture(scope="module")
def packed(imagenet, tmp_path_factory):
    out = tmp_path_factory.mktemp("packs") / "store"
    pack(str(imagenet), str(out), encoding="raw", workers=0, log=lambda *a: None)
    return out


def _all(name: str, train: bool):
    split = load_split(train, DataConfig(name=name, workers=0), 5, ordered=True)
    images, labels = zip(*split.loader)
    return split, torch.cat(images), torch.cat(labels)


@pytest.mark.parametrize("train", [True, False])
def test_store_equals_the_decoded_folder(imagenet, packed, train):
    folder, x1, y1 = _all(str(imagenet), train)
    store, x2, y2 = _all(str(packed), train)
    assert store.classes == folder.classes and store.size == folder.size
    assert torch.equal(x1, x2) and torch.equal(y1, y2)  # same bytes, same labels, same order


def test_shuffled_batches_and_augmentation_match_the_folder(imagenet, packed):
    """Same seed, same epoch: the same batches; the device-side augmentation then sees the
    same uint8 images, so crops, mirrors and lighting have the same distribution."""
    from alexnet.core.augment import Preprocess

    cfg = DataConfig(name=str(imagenet), workers=0)
    a = load_split(True, cfg, 4, seed=3)
    b = load_split(True, DataConfig(name=str(packed), workers=0), 4, seed=3)
    a.loader.set_epoch(2)
    b.loader.set_epoch(2)
    prep = Preprocess(cfg, 227, torch.device("cpu"))
    for (xa, ya), (xb, yb) in zip(a.loader, b.loader):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        torch.manual_seed(0)
        pa = prep(xa, train=True)
        torch.manual_seed(0)
        assert torch.equal(pa, prep(xb, train=True))


def test_manifest_and_errors(imagenet, packed, tmp_path):
    manifest = json.loads((packed / "pack.json").read_text())
    assert manifest["splits"]["train"]["count"] == 12 and manifest["resize"] == 256
    with pytest.raises(UserError, match="not empty"):
        pack(str(imagenet), str(packed), workers=0)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in packed.iterdir():
        (broken / f.name).write_bytes(f.read_bytes()[: max(0, f.stat().st_size - (1 if f.suffix == ".u8" else 0))])
    with pytest.raises(UserError, match="incomplete pack"):
        load_split(True, DataConfig(name=str(broken)), 4)


@pytest.mark.slow
def test_train_from_a_packed_store(packed, tmp_path):
    rc = main(
        [
            "train",
            "--data",
            str(packed),
            "--model",
            "small",
            "--input-size",
            "64",
            "--resize",
            "256",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert rc == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["num_classes"] == 3


def test_shards_read_back_in_any_order(imagenet, tmp_path, monkeypatch):
    """Five images per shard: shuffled batches gather across shard files, in batch order."""
    import alexnet.data.pack

    monkeypatch.setattr(alexnet.data.pack, "SHARD_BYTES", 5 * 3 * 256 * 256)
    pack(str(imagenet), str(tmp_path / "store"), encoding="raw", workers=0, log=lambda *a: None)
    shards = json.loads((tmp_path / "store" / "pack.json").read_text())["splits"]["train"]["shards"]
    assert [s["count"] for s in shards] == [5, 5, 2]
    a = load_split(True, DataConfig(name=str(imagenet), workers=0), 6, seed=1)
    b = load_split(True, DataConfig(name=str(tmp_path / "store"), workers=0), 6, seed=1)
    for epoch in range(2):
        a.loader.set_epoch(epoch)
        b.loader.set_epoch(epoch)
        for (xa, ya), (xb, yb) in zip(a.loader, b.loader, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)

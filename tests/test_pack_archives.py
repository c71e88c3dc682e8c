"""`alexnet pack` from ImageNet's three downloads (conftest.imagenet_downloads), the JPEG
store, `pack --list`, and a pack killed with SIGKILL at several points."""

import csv
import hashlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.config import DataConfig
from alexnet.data import store
from alexnet.data.datasets import load_split
from alexnet.data.pack import pack
from alexnet.data.store import list_store
from alexnet.run.errors import UserError

QUIET = {"log": lambda *a: None}


@pytest.fixture(scope="module")
def stores(imagenet_downloads, imagenet, tmp_path_factory):
    """Raw and JPEG stores of the downloads, and a raw store of the folder."""
    root = tmp_path_factory.mktemp("stores")
    for name, src, fmt in (("raw", imagenet_downloads, "raw"), ("jpeg", imagenet_downloads, "jpeg")):
        pack(str(src), str(root / name), encoding=fmt, workers=0, **QUIET)
    pack(str(imagenet), str(root / "folder-raw"), encoding="raw", workers=0, **QUIET)
    return root


def _all(name, train: bool, workers: int = 0):
    split = load_split(train, DataConfig(name=str(name), workers=workers), 5, ordered=True)
    images, labels = zip(*split.loader)
    return split, torch.cat(images), torch.cat(labels)


def _listing(path) -> list[dict]:
    out = io.StringIO()
    list_store(path, out)
    return list(csv.DictReader(io.StringIO(out.getvalue())))


def _tree(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_the_downloads_give_the_folders_training_images(stores, imagenet):
    folder, x1, y1 = _all(imagenet, True)
    packed, x2, y2 = _all(stores / "raw", True)
    assert packed.classes == folder.classes == sorted(folder.classes)  # sorted wnids: torchvision's indices
    assert torch.equal(x1, x2) and torch.equal(y1, y2)  # the truncated extra file is not among them


def test_every_validation_image_carries_its_class(stores, imagenet):
    """Labels come from the devkit's ground truth through meta.mat's IDs (not in sorted
    order, with a non-leaf synset), and agree with Kaggle's LOC_val_solution.csv."""
    truth = {}
    for line in (imagenet / "LOC_val_solution.csv").read_text().splitlines()[1:]:
        image, rest = line.split(",")
        truth[f"{image}.JPEG"] = rest.split()[0]
    rows = [r for r in _listing(stores / "raw") if r["split"] == "val"]
    assert len(rows) == len(truth) and {r["source"] for r in rows} == set(truth)
    assert all(r["class"] == truth[r["source"]] for r in rows)
    # and the pixels are the folder's validation images of that class
    folder, x1, y1 = _all(imagenet, False)
    _, x2, y2 = _all(stores / "raw", False)
    for i, r in enumerate(rows):
        j = next(k for k in range(len(x1)) if torch.equal(x1[k], x2[i]))
        assert folder.classes[y1[j]] == r["class"] == folder.classes[y2[i]]


def test_list_names_every_stored_image_and_the_manifest_the_unreadable(stores):
    rows = _listing(stores / "raw")
    assert list(rows[0]) == ["split", "index", "source", "class", "label"]
    train = [r for r in rows if r["split"] == "train"]
    assert [int(r["index"]) for r in train] == list(range(len(train))) == list(range(12))
    assert all(r["source"].startswith(r["class"] + "/") for r in train)
    manifest = json.loads((stores / "raw" / "pack.json").read_text())
    assert manifest["source_kind"] == "imagenet-archives"
    assert manifest["class_names"] == ["tabby", "space shuttle", "espresso"]
    (bad,) = manifest["splits"]["train"]["unreadable"]
    assert "ILSVRC2012_img_train.tar:n04266014/n04266014_9.JPEG" in bad and "not a readable image" in bad


def test_the_cli_packs_and_lists(imagenet_downloads, tmp_path, cli, one_line_error):
    out = tmp_path / "store"
    rc, stdout, _ = cli("pack", imagenet_downloads, out, "--workers", "0", "--limit", "4")
    assert rc == 0 and f"--data {out}" in stdout
    rc, stdout, _ = cli("pack", "--list", out)
    rows = list(csv.DictReader(io.StringIO(stdout)))
    assert rc == 0 and [r["split"] for r in rows] == ["train"] * 4 + ["val"] * 4
    rc, _, err = cli("pack", imagenet_downloads, out)
    one_line_error(rc, err, str(out), "not empty")
    rc, _, err = cli("pack", "--list", tmp_path)
    one_line_error(rc, err, "pack.json")


def test_a_partial_set_of_downloads_is_named(imagenet_downloads, tmp_path, one_line_error, cli):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ILSVRC2012_img_train.tar").symlink_to(imagenet_downloads / "ILSVRC2012_img_train.tar")
    rc, _, err = cli("pack", src, tmp_path / "out")
    one_line_error(rc, err, "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz")
    (src / "ILSVRC2012_img_val.tar").write_bytes(b"not a tar")
    (src / "ILSVRC2012_devkit_t12.tar.gz").symlink_to(imagenet_downloads / "ILSVRC2012_devkit_t12.tar.gz")
    rc, _, err = cli("pack", src, tmp_path / "out")
    one_line_error(rc, err, "ILSVRC2012_img_val.tar", "not an uncompressed tar")


def test_the_jpeg_store_gives_the_same_inputs_up_to_the_jpeg_rounding(stores):
    for train in (True, False):
        raw, x1, y1 = _all(stores / "raw", train)
        jpg, x2, y2 = _all(stores / "jpeg", train)
        assert jpg.classes == raw.classes and torch.equal(y1, y2) and x1.shape == x2.shape
        mse = (x1.float() - x2.float()).pow(2).mean()
        psnr = 10 * torch.log10(255**2 / mse)
        assert psnr > 35, psnr  # quality 90; docs/BENCHMARKS.md has the curve
        assert (x1.float() - x2.float()).abs().mean() < 2.5


def test_pil_and_simplejpeg_decode_the_same_pixels(stores, monkeypatch):
    pytest.importorskip("simplejpeg")
    _, x1, _ = _all(stores / "jpeg", True)
    monkeypatch.setattr(store, "simplejpeg", None)
    _, x2, _ = _all(stores / "jpeg", True)
    assert torch.equal(x1, x2)


@pytest.mark.slow
def test_decoding_workers_give_the_same_batches(stores):
    """Two worker processes decode whole batches; a mid-epoch start continues the epoch."""
    one = load_split(True, DataConfig(name=str(stores / "jpeg"), workers=0), 4, seed=1)
    two = load_split(True, DataConfig(name=str(stores / "jpeg"), workers=2), 4, seed=1)
    for loader in (one.loader, two.loader):
        loader.set_epoch(3)
    a, b = list(one.loader), list(two.loader)
    assert len(a) == len(b) == 3
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    two.loader.set_epoch(3, start=1)
    assert all(torch.equal(x, y[0]) for (x, _), y in zip(two.loader, a[1:]))


def test_jpeg_shards_read_back_in_any_order(imagenet_downloads, stores, tmp_path, monkeypatch):
    """Shards of at most 60 KB: shuffled batches gather across shard files, in batch order,
    the same images as the one-shard store."""
    import alexnet.data.pack

    monkeypatch.setattr(alexnet.data.pack, "SHARD_BYTES", 60_000)
    pack(str(imagenet_downloads), str(tmp_path / "store"), workers=0, **QUIET)
    shards = json.loads((tmp_path / "store" / "pack.json").read_text())["splits"]["train"]["shards"]
    assert len(shards) > 2 and all(s["bytes"] <= 60_000 for s in shards) and sum(s["count"] for s in shards) == 12
    a = load_split(True, DataConfig(name=str(stores / "jpeg"), workers=0), 6, seed=1)
    b = load_split(True, DataConfig(name=str(tmp_path / "store"), workers=0), 6, seed=1)
    for epoch in range(2):
        a.loader.set_epoch(epoch)
        b.loader.set_epoch(epoch)
        for (xa, ya), (xb, yb) in zip(a.loader, b.loader, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_a_worker_gets_no_per_image_objects(stores):
    """What a spawned worker receives does not grow with the images: the offsets stay a
    memory map on disk, the labels one tensor (a million entries would be 10 MB each)."""
    split = load_split(True, DataConfig(name=str(stores / "jpeg"), workers=0), 4)
    images = split.loader.images
    state = pickle.dumps(images)
    assert len(state) < 4096 and isinstance(split.loader.labels, torch.Tensor)
    assert images.take([0, 3]).shape == (2, 3, 256, 256)
    assert isinstance(pickle.loads(state).take([1]), torch.Tensor)


def test_a_damaged_jpeg_store_is_named(stores, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in (stores / "jpeg").iterdir():
        data = f.read_bytes()
        (broken / f.name).write_bytes(data[:-1] if f.suffix == ".jpg" else data)
    with pytest.raises(UserError, match="incomplete pack"):
        load_split(True, DataConfig(name=str(broken)), 4)


# ----------------------------------------------------------------------------- killed and resumed

KILLER = """
import os, signal, sys
import alexnet.data.pack as p
p.CHECKPOINT_IMAGES = 3
point, n = sys.argv[1], int(sys.argv[2])
calls = [0]
def die():
    calls[0] += 1
    if calls[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
if point == "add":  # after n images appended (some not yet recorded in progress.json)
    add = p._SplitWriter.add
    p._SplitWriter.add = lambda self, *a: (add(self, *a), die())
elif point == "progress":  # while progress.json is being replaced, the n-th time
    save = p._save_progress
    p._save_progress = lambda *a: (die(), save(*a))
elif point == "finish":  # the manifest written, the store not yet renamed
    complete = p._complete
    p._complete = lambda *a: (die(), complete(*a))
p.pack(sys.argv[3], sys.argv[4], encoding="jpeg", workers=int(sys.argv[5]), log=lambda *a: None)
"""


@pytest.mark.slow
def test_a_killed_pack_resumes_to_the_same_store_bit_for_bit(imagenet_downloads, stores, tmp_path):
    reference = _tree(stores / "jpeg")
    for point, n, workers in (
        ("add", 2, 0),
        ("add", 14, 0),
        ("progress", 2, 2),
        ("add", 13, 0),
        ("add", 16, 0),
        ("finish", 1, 0),
    ):
        out = tmp_path / f"{point}-{n}"
        cmd = [sys.executable, "-c", KILLER, point, str(n), str(imagenet_downloads), str(out), str(workers)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == -signal.SIGKILL, (point, n, r.stderr[-2000:])
        assert not out.exists() and (out.parent / f"{out.name}.partial").is_dir()
        pack(str(imagenet_downloads), str(out), encoding="jpeg", workers=0, **QUIET)  # the same command again
        assert _tree(out) == reference, (point, n)
        assert not (out.parent / f"{out.name}.partial").exists()


def test_an_interrupted_pack_with_other_options_is_refused(imagenet_downloads, tmp_path):
    out = tmp_path / "store"
    partial = tmp_path / "store.partial"
    partial.mkdir()
    (partial / "progress.json").write_text('{"params": {"source": "elsewhere"}, "splits": {}}')
    with pytest.raises(UserError, match="other options"):
        pack(str(imagenet_downloads), str(out), workers=0, **QUIET)
    assert (partial / "progress.json").is_file()  # nothing of it was touched


@pytest.mark.slow
def test_train_and_evaluate_from_the_jpeg_store(stores, tmp_path, cli):
    run = tmp_path / "run"
    rc, _, err = cli(
        "train", "--data", stores / "jpeg", "--model", "small", "--input-size", "64", "--epochs", "2",
        "--batch-size", "4", "--amp", "off", "--workers", "0", "--resize", "256", "--out", run,
    )  # fmt: skip
    assert rc == 0, err
    rc, out, err = cli("evaluate", run / "last.pt", "--data", stores / "jpeg", "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert result["images"] == 6 and 0 <= result["top1"] <= 1
    assert np.isfinite(result["loss"])

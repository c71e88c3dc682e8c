"""The paper's recipe on a tiny ImageNet: layouts, mean image, PCA, plateau, 10 patches."""

import json
import os
from pathlib import Path

import pytest
import torch

from alexnet.apps.cli import main
from alexnet.config import DataConfig, TrainConfig
from alexnet.core.optim import lr_drops, plateau_scheduler
from alexnet.data.datasets import load_image, load_split, stored_transform
from alexnet.data.stats import mean_image, rgb_pca
from conftest import WNIDS


def flat_view(imagenet: Path, tmp: Path, *label_files) -> Path:
    """The same data with the flat official val/ folder and the given label files."""
    root = tmp / "flat"
    root.mkdir()
    os.symlink(imagenet / "train", root / "train")
    os.symlink(imagenet / "val_flat", root / "val")
    for f in label_files:
        os.symlink(imagenet / f, root / Path(f).name)
    return root


def _labels(root: Path, **kw) -> list[tuple[str, str]]:
    split = load_split(False, DataConfig(name=str(root), workers=0, **kw), 4, ordered=True)
    ds = split.loader.dataset  # the folder dataset the loader reads
    return sorted((Path(p).name, split.classes[y]) for p, y in ds.samples)


def _truth(imagenet: Path) -> list[tuple[str, str]]:
    rows = (imagenet / "LOC_val_solution.csv").read_text().splitlines()[1:]
    return sorted((f"{r.split(',')[0]}.JPEG", r.split(",")[1].split()[0]) for r in rows)


def test_flat_val_with_kaggle_csv(imagenet, tmp_path):
    root = flat_view(imagenet, tmp_path, "LOC_val_solution.csv")
    assert _labels(root) == _truth(imagenet)


def test_flat_val_with_devkit_ground_truth_and_meta_mat(imagenet, tmp_path):
    root = flat_view(imagenet, tmp_path, "ILSVRC2012_devkit_t12")
    assert _labels(root) == _truth(imagenet)


def test_flat_val_without_labels_is_a_clear_error(imagenet, tmp_path, capsys):
    root = flat_view(imagenet, tmp_path)
    rc = main(["train", "--data", str(root), "--epochs", "1", "--workers", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "LOC_val_solution.csv" in err and len(err.strip().splitlines()) == 1


def test_every_mode_loads_as_rgb(imagenet):
    for path in (imagenet / "train").rglob("*.JPEG"):
        img = load_image(path, 3)
        assert img.mode == "RGB" and min(img.size) >= 200


def test_mean_image_is_the_mean_of_the_decoded_training_set(imagenet):
    cfg = DataConfig(name=str(imagenet), workers=0)
    got = mean_image(load_split(True, cfg, 5, ordered=True), (3, cfg.resize, cfg.resize))
    transform = stored_transform(256)
    decoded = [transform(load_image(p, 3)).double() for p in sorted((imagenet / "train").rglob("*.JPEG"))]
    expected = torch.stack(decoded).mean(0)
    assert got.shape == (3, 256, 256)
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=0)


def test_rgb_pca_matches_the_covariance_of_the_pixels(imagenet):
    cfg = DataConfig(name=str(imagenet), workers=0)
    eigval, eigvec = rgb_pca(load_split(True, cfg, 5, ordered=True))
    transform = stored_transform(256)
    px = torch.cat(
        [
            transform(load_image(p, 3)).reshape(3, -1).double() / 255
            for p in sorted((imagenet / "train").rglob("*.JPEG"))
        ],
        dim=1,
    )
    cov = torch.cov(px, correction=0)
    v, P = torch.tensor(eigval, dtype=torch.float64), torch.tensor(eigvec, dtype=torch.float64)
    assert v[0] >= v[1] >= v[2] > 0
    torch.testing.assert_close(P @ torch.diag(v) @ P.T, cov, atol=1e-8, rtol=1e-6)
    torch.testing.assert_close(P.T @ P, torch.eye(3, dtype=torch.float64), atol=1e-10, rtol=0)


def test_plateau_schedule_drops_when_the_error_stops_improving_and_stops_after_three():
    cfg = TrainConfig(lr=0.01, plateau_patience=2, plateau_threshold=0.002, lr_drops=3)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    sched = plateau_scheduler(opt, cfg)
    errors = [0.9, 0.8, 0.7, 0.7, 0.699, 0.7, 0.6, 0.6, 0.6, 0.6, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    drops_after, stopped_at = [], None
    for epoch, err in enumerate(errors, start=1):
        sched.step(err)
        drops_after.append(lr_drops(opt, cfg))
        if lr_drops(opt, cfg) > cfg.lr_drops:
            stopped_at = epoch
            break
    # best 0.7 at epoch 3; 0.7, 0.699 (< 0.002 better), 0.7: three bad epochs > patience 2
    assert drops_after[:7] == [0, 0, 0, 0, 0, 1, 1]
    assert drops_after.index(2) == 9  # 0.6 at 7, then three epochs without a gain
    assert drops_after.index(3) == 13  # 0.5 at 11, then three more
    assert stopped_at == 17 and opt.param_groups[0]["lr"] == pytest.approx(1e-6)


@pytest.mark.slow
def test_paper_recipe_end_to_end(imagenet, tmp_path, capsys):
    out = tmp_path / "run"
    pca = tmp_path / "pca.json"
    assert main(["pca", str(imagenet), "--workers", "0", "--out", str(pca)]) == 0
    capsys.readouterr()
    # lr so small that the validation error cannot move: the plateau rule then drops the lr
    # at epochs 2, 3, 4 and stops at the fourth plateau, epoch 5 (patience 0)
    rc = main(
        [
            "train",
            "--data",
            str(imagenet),
            "--recipe",
            "paper",
            "--epochs",
            "8",
            "--lr",
            "1e-9",
            "--batch-size",
            "4",
            "--plateau-patience",
            "0",
            "--workers",
            "0",
            "--pca",
            str(pca),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    log = capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["name"] == "paper" and cfg["model"]["init"] == "paper"
    assert cfg["data"]["mean_image"] and cfg["data"]["lighting"] == 0.1
    assert cfg["data"]["std"] == [1.0, 1.0, 1.0]  # §2: raw pixels minus the mean
    assert cfg["data"]["pca_eigval"] == json.loads(pca.read_text())["eigval"]
    assert cfg["train"]["schedule"] == "plateau" and cfg["train"]["momentum_rule"] == "paper"
    assert log.count("learning rate") == 4 and "after 3 drops: done" in log
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 5 and ckpt["finished"]
    assert ckpt["class_names"] == [WNIDS[w] for w in sorted(WNIDS)]  # from meta.mat
    cached = imagenet / ".alexnet-mean-256.safetensors"
    assert cached.is_file()
    assert ckpt["mean_image"].shape == (3, 256, 256)

    for extra in ([], ["--ten-crop"]):
        assert main(["evaluate", str(out / "last.pt"), "--device", "cpu", "--json", *extra]) == 0
        r = json.loads(capsys.readouterr().out)
        assert r["images"] == 6 and r["patches"] == (10 if extra else 1)
        assert 0 <= r["top1"] <= r["top5"] <= 1

    photo = next((imagenet / "val" / "n07920052").glob("*.JPEG"))
    assert main(["predict", str(out / "model.safetensors"), str(photo), "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)[0]["predictions"]
    assert {p["name"] for p in preds} == set(WNIDS.values())

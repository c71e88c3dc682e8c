"""The image-folder default (`--recipe folder`) trains the paper's model on a user's own
photos at small and larger batch sizes; the paper's recipe stays one flag away."""

import csv
import json
import math

import pytest

from alexnet.apps.cli import main
from alexnet.core.recipes import default_recipe, resolve


def test_a_folder_defaults_to_the_folder_recipe_and_the_paper_is_one_flag_away():
    assert default_recipe("/my/photos") == "folder"
    cfg = resolve("/my/photos", {}, {}, {"batch_size": 32})
    assert cfg.model.name == "paper" and cfg.model.init == "caffe"
    assert cfg.train.lr == pytest.approx(0.01 * math.sqrt(32 / 128))  # sqrt(batch / 128)
    assert resolve("/my/photos", {}, {}, {"batch_size": 32, "lr": 0.02}).train.lr == 0.02  # --lr wins
    paper = resolve("/my/photos", {}, {}, {"batch_size": 4}, recipe="paper")
    assert paper.model.init == "paper" and paper.train.lr == 0.01 and paper.train.amp == "off"
    # everything else is the paper's
    a, b = cfg.data, resolve("/my/photos", {}, {}, {}, recipe="paper").data
    assert a == b and cfg.train.schedule == "plateau" and cfg.train.weight_decay == 5e-4


@pytest.mark.slow
@pytest.mark.parametrize("batch, epochs, folder", [(4, 10, "photo_folder"), (32, 10, "photo_folder_96")])
def test_the_folder_default_learns_real_photos(batch, epochs, folder, request, tmp_path):
    # memorising a few dozen photos is learning: the training loss falls well below ln 3
    data, out = request.getfixturevalue(folder), tmp_path / "run"
    rc = main(
        [
            "train",
            "--data",
            str(data),
            "--batch-size",
            str(batch),
            "--epochs",
            str(epochs),
            "--device",
            "cpu",
            "--workers",
            "0",
            "--amp",
            "off",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    with open(out / "metrics.csv", newline="") as f:
        losses = [float(row["train_loss"]) for row in csv.DictReader(f)]
    assert len(losses) == epochs and all(math.isfinite(v) for v in losses)
    assert min(losses[-3:]) < 0.5 * math.log(3) < losses[0], losses
    assert json.loads((out / "summary.json").read_text())["status"] == "done"

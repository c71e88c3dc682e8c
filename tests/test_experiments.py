import csv
import json
import os

import pytest
from PIL import Image

from alexnet.cli import main
from alexnet.experiments import EXPERIMENTS, crossing, run

FIELDS = ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_top1", "val_top5",
          "epoch_seconds", "train_images_per_s")


def fake_train(curves):
    """A stand-in for train(): writes the metrics.csv an arm would, from known curves."""
    def train(cfg, limit_train=None, limit_val=None):
        m = cfg.model
        arm = {"relu": "a", "tanh": "b"}.get(m.activation, "a")
        if not m.lrn or m.pooling == "nonoverlap" or m.dropout == 0 or not m.groups:
            arm = "b"
        train_err, test_err, seconds = curves[arm]
        out = cfg.train.out
        os.makedirs(out, exist_ok=True)
        with open(f"{out}/metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            for e, (tr, te, s) in enumerate(zip(train_err, test_err, seconds), start=1):
                w.writerow({"epoch": e, "step": e, "lr": 0.1, "train_loss": 1, "train_acc": 1 - tr,
                            "val_loss": 1, "val_top1": 1 - te, "val_top5": 1, "epoch_seconds": s,
                            "train_images_per_s": 1})
    return train


CURVES = {"a": ([0.5, 0.2, 0.1, 0.08], [0.3, 0.15, 0.12, 0.11], [10, 10, 10, 10]),
          "b": ([0.6, 0.4, 0.25, 0.1], [0.35, 0.2, 0.15, 0.14], [20, 20, 20, 20])}


def test_crossing_interpolates():
    assert crossing([1, 2, 3], [0.5, 0.2, 0.1], 0.2) == 2
    assert crossing([1, 2, 3], [0.5, 0.3, 0.1], 0.2) == pytest.approx(2.5)
    assert crossing([1, 2], [0.5, 0.4], 0.2) is None


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_experiment_writes_its_table_and_plot(name, tmp_path):
    r = run(name, seeds=2, quick=True, out=str(tmp_path), train_fn=fake_train(CURVES))
    folder = tmp_path / name
    assert json.loads((folder / "results.json").read_text())["experiment"] == name
    md = (folder / "results.md").read_text()
    assert md.count("\n| ") == 3 and all(arm in md for arm in EXPERIMENTS[name].arms)
    assert Image.open(folder / "results.png").size == (1000, 400)
    paper, other = (r["arms"][a] for a in EXPERIMENTS[name].arms)
    assert paper["test_error"]["mean"] == pytest.approx(0.11) and other["test_error"]["mean"] == pytest.approx(0.14)
    assert paper["test_error"]["std"] == 0 and paper["test_error"]["n"] == 2
    assert r["effect"]["test_error_difference"] == pytest.approx(0.03)
    if name == "relu-vs-tanh":  # 15%: a at epoch 2.5, 25 s; b at epoch 3.67, 73.3 s
        assert paper["epochs_to_threshold"]["mean"] == pytest.approx(2.5)
        assert other["seconds_to_threshold"]["mean"] == pytest.approx(20 * (3 + 2 / 3))
        assert r["effect"]["speedup_seconds"] == pytest.approx((20 * (3 + 2 / 3)) / 25)
    if name == "dropout":  # gap a: 0.11 - 0.08, b: 0.14 - 0.10
        assert r["effect"]["gap_difference"] == pytest.approx(0.01)


def test_quick_experiment_through_the_cli(fashion_dir, tmp_path, capsys):
    assert main(["experiment", "lrn", "--quick", "--data-dir", fashion_dir, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| LRN |" in out and "| no LRN |" in out
    r = json.loads((tmp_path / "lrn" / "results.json").read_text())
    assert r["epochs"] == 2 and r["limit_train"] == 3000
    assert 0 < r["arms"]["LRN"]["test_error"]["mean"] < 0.9

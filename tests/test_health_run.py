"""Health checks in real runs: a diverging run stops with its advice and keeps its last good
checkpoint; a flat run warns within its first epoch and goes on; a healthy run says done."""

import csv
import json
import math

import pytest
import torch

from alexnet.apps.cli import main

pytestmark = pytest.mark.slow  # every test trains (or uses fashion_run, which does)


def test_the_paper_recipe_diverging_at_batch_4_stops(photo_folder, tmp_path, capsys):
    # issue 11: raw pixels, the paper's lr for batch 128 at batch 4 -> loss 49, then 1e32
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--recipe",
            "paper",
            "--data",
            str(photo_folder),
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--seed",
            "5",
            "--epochs",
            "2",
            "--workers",
            "0",
            "--out",
            str(out),
        ]
    )
    stdout, stderr = capsys.readouterr()
    assert rc == 2
    error = [line for line in stderr.splitlines() if line.startswith("alexnet: error:")]
    assert len(error) == 1 and "training diverged" in error[0] and "--init caffe" in error[0]
    assert "step 12:" in error[0] and f"last good checkpoint is {out / 'last.pt'}" in error[0]
    assert "Traceback" not in stderr and "done" not in stdout
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["health"][-1]["kind"] in ("exploding", "non_finite")
    assert summary["health"][-1]["fatal"] is True


def test_a_flat_run_warns_in_its_first_epoch_and_goes_on(fashion_dir, tmp_path, capsys):
    # the paper's init leaves the small net at ln 10 (docs/BENCHMARKS.md); 2560 images = 20 steps
    out = tmp_path / "flat"
    rc = main(
        [
            "train",
            "--data-dir",
            fashion_dir,
            "--init",
            "paper",
            "--limit-train",
            "2560",
            "--limit-val",
            "256",
            "--epochs",
            "2",
            "--amp",
            "off",
            "--flat-steps",
            "20",
            "--width",
            "0.5",
            "--out",
            str(out),
        ]
    )
    stdout, stderr = capsys.readouterr()
    assert rc == 0
    warnings = [line for line in (stdout + stderr).splitlines() if "has not fallen below ln 10" in line]
    assert warnings[0].startswith("alexnet: warning: step 20: training loss")
    assert "--init caffe" in warnings[0] and "may still leave this plateau" in warnings[0]
    assert len([w for w in warnings if w.startswith("alexnet: warning:")]) == 1  # said once
    assert warnings[-1].startswith("  warning: step 20:")  # and again under the last line
    last = stdout.strip().splitlines()
    assert any(line.startswith("finished with warnings: validation top-1") for line in last)
    assert not any(line.startswith("done") for line in last)
    with open(out / "metrics.csv", newline="") as f:
        assert next(csv.DictReader(f))["health"].split()[0] == "not_learning"  # epoch 1's events
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished with warnings"
    assert summary["health"][0]["kind"] == "not_learning" and summary["health"][0]["step"] == 20
    # (its ReLUs then die too: a dead_gradients warning may follow, also once)
    assert all(not e["fatal"] for e in summary["health"]) and len(summary["health"]) <= 2


def test_a_healthy_run_says_done(fashion_run):
    summary = json.loads((fashion_run / "summary.json").read_text(), parse_constant=lambda c: 1 / 0)
    assert summary["status"] == "done" and summary["health"] == []
    assert math.isfinite(summary["val"]["loss"]) and summary["epochs_done"] == 2

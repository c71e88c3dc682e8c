"""SIGTERM/SIGINT save a checkpoint and exit cleanly; the run resumes exactly mid-epoch;
a NaN stops the run and leaves the last good checkpoint; unreadable files are skipped."""

import signal

import pytest
import torch

import gates
from alexnet.apps.cli import main
from tiny import tiny_train_argv

pytestmark = pytest.mark.slow  # every test trains (or uses fashion_run, which does)

ARGS = [
    "--limit-train",
    "4800",
    "--limit-val",
    "100",
    "--width",
    "0.25",
    "--epochs",
    "3",
    "--batch-size",
    "16",
    "--amp",
    "off",
    "--schedule",
    "step",
    "--step-epochs",
    "2",
]


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_and_resume_is_exact(fashion_dir, tmp_path, sig):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main(["train", "--data-dir", fashion_dir, *ARGS, "--out", str(straight)]) == 0
    # the run pauses inside its 5th step of epoch 2 (epoch 1 saved, then 5 optimiser steps)
    # and gets the signal there; let go, it finishes that step, saves and stops
    with open(tmp_path / "stderr.txt", "w+b") as log:
        proc = gates.start(["train", "--data-dir", fashion_dir, *ARGS, "--out", stopped], "replaced,step:5", stderr=log)
        try:
            gates.wait_for_gate(proc)
            proc.send_signal(sig)
            gates.release(proc)
            proc.communicate(timeout=gates.DEADLINE)  # a safety net only
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.seek(0)
        err = log.read().decode()
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and "--resume" in err.strip().splitlines()[-1]
    ckpt = torch.load(stopped / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["step_in_epoch"] == 5  # stopped inside epoch 2, after that step
    assert main(["train", "--data-dir", fashion_dir, *ARGS, "--out", str(stopped), "--resume"]) == 0
    a, b = _weights(straight / "last.pt"), _weights(stopped / "last.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit-identical to the uninterrupted run


def test_nan_stops_with_advice_and_keeps_the_last_good_checkpoint(fashion_dir, tmp_path, capsys):
    out = tmp_path / "nan"
    common = tiny_train_argv(fashion_dir, 1000, 100, "--out", str(out))  # a constant lr
    assert main([*common, "--epochs", "1"]) == 0
    good = _weights(out / "last.pt")
    capsys.readouterr()
    rc = main([*common, "--epochs", "2", "--resume", "--lr", "1e6"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("alexnet:")]
    assert rc == 2 and len(errors) == 1  # (the progress bar's remains aside)
    assert "loss is" in errors[0] and "--lr" in errors[0] and "--init caffe" in errors[0]
    after = _weights(out / "last.pt")
    assert all(torch.equal(good[k], after[k]) for k in good)


def test_unreadable_training_files_are_skipped_and_listed(tmp_path, capsys):
    from PIL import Image
    from skimage import data as skdata

    root = tmp_path / "data"
    for split, n in (("train", 4), ("val", 1)):
        for cls, arr in (("cat", skdata.chelsea()), ("coffee", skdata.coffee())):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(arr).resize((80 + 10 * i, 70)).save(d / f"{i}.jpg")
    bad = {
        "zero.jpg": b"",
        "text.jpg": b"not an image at all",
        "truncated.jpg": (root / "train" / "cat" / "0.jpg").read_bytes()[:300],
    }
    for name, content in bad.items():
        (root / "train" / "cat" / name).write_bytes(content)
    common = [
        "train",
        "--data",
        str(root),
        "--model",
        "small",
        "--input-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "3",
        "--workers",
        "0",
    ]
    assert main([*common, "--out", str(tmp_path / "run")]) == 0
    listed = (tmp_path / "run" / "unreadable.txt").read_text().splitlines()
    assert sorted(line.split(":")[0].rsplit("/", 1)[1] for line in listed) == sorted(bad)
    capsys.readouterr()
    rc = main([*common, "--strict", "--out", str(tmp_path / "strict")])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("alexnet:")]
    assert rc == 2 and len(errors) == 1 and any(name in errors[0] for name in bad)


def test_resume_rewrites_metrics_and_cleans_temporary_files(fashion_dir, tmp_path):
    out = tmp_path / "run"
    common = tiny_train_argv(fashion_dir, 600, 100, "--out", str(out))
    assert main([*common, "--epochs", "1"]) == 0
    # a kill after the metrics row of epoch 2 but before its checkpoint, and a torn write
    with open(out / "metrics.csv", "a") as f:
        f.write("2,0,0,0,0,0,0,0,0,0\n")
    (out / ".last.pt.abc.tmp").write_bytes(b"half a checkpoint")
    assert main([*common, "--epochs", "2", "--resume"]) == 0
    epochs = [line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2"]
    assert not list(out.glob(".*.tmp"))
    # a fresh run into the same folder starts a new metrics.csv, with its header
    assert main([*common, "--epochs", "1"]) == 0
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("epoch,")
    assert len((out / "metrics.csv").read_text().splitlines()) == 2


def test_weights_only_file_cannot_be_resumed(fashion_run, capsys, fashion_dir):
    rc = main(
        [
            "train",
            "--data-dir",
            fashion_dir,
            "--resume",
            str(fashion_run / "model.safetensors"),
            "--out",
            str(fashion_run / "again"),
        ]
    )
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("alexnet:")]
    assert rc == 2 and len(errors) == 1 and "training checkpoint" in errors[0]

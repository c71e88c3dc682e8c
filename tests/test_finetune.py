"""Fine-tuning (`train --init-from CKPT --freeze ...`), `alexnet features`, and the verdict
of a run that did not learn."""

import json
import math
import shutil

import pytest
import torch
from safetensors import safe_open

pytestmark = pytest.mark.slow  # each trains a small model

SMALL = ["--model", "small", "--input-size", "64", "--batch-size", "4", "--amp", "off", "--workers", "0"]


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def source(photo_folder, tmp_path_factory):
    """A small model trained one epoch on the 3-class photo folder."""
    from alexnet.apps.cli import main

    out = tmp_path_factory.mktemp("source")
    assert main(["train", "--data", str(photo_folder), *SMALL, "--epochs", "1", "--out", str(out)]) == 0
    return out / "last.pt"


@pytest.fixture(scope="module")
def two_classes(photo_folder, tmp_path_factory):
    """Another folder: two classes the source was not trained on (its cats and rockets, renamed)."""
    root = tmp_path_factory.mktemp("two-classes")
    for split in ("train", "val"):
        for old, new in (("cat", "felis"), ("rocket", "saturn")):
            shutil.copytree(photo_folder / split / old, root / split / new)
    return root


def test_freeze_features_onto_other_classes(source, two_classes, tmp_path, cli):
    out = tmp_path / "run"
    rc, stdout, err = cli(
        "train", "--data", two_classes, "--init-from", source, "--freeze", "features", "--epochs", "2",
        "--workers", "0", "--amp", "off", "--out", out,
    )  # fmt: skip
    assert rc == 0, err
    assert f"fine-tuning {source}: its layers but the last, which is new for 2 classes (it had 3)" in stdout
    before, after = _weights(source), _weights(out / "last.pt")
    convs = [k for k in before if k.startswith("features.")]
    assert convs and all(torch.equal(before[k], after[k]) for k in convs)  # frozen: bit-identical
    last = [k for k in after if k.startswith("classifier.")][-1]  # the last Linear's bias
    assert after[last].shape == (2,) and before[last].shape == (3,)
    fc = [k for k in before if k.startswith("classifier.") and k.endswith(".weight")]
    assert not torch.equal(before[fc[0]], after[fc[0]])  # fc6 trained
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["name"] == "small" and config["model"]["input_size"] == 64  # the checkpoint's network
    assert config["model"]["num_classes"] == 2 and config["train"]["schedule"] == "onecycle"  # recipe finetune


def test_the_same_classes_keep_the_last_layer(source, photo_folder, tmp_path, cli):
    out = tmp_path / "run"
    rc, stdout, err = cli(
        "train", "--data", photo_folder, "--init-from", source, "--freeze", "fc7", "--lr", "1e-12",
        "--epochs", "1", "--workers", "0", "--amp", "off", "--out", out,
    )  # fmt: skip
    assert rc == 0, err
    assert "fine-tuning every layer of" in stdout
    before, after = _weights(source), _weights(out / "last.pt")
    for k in before:
        if k.startswith("classifier."):
            torch.testing.assert_close(before[k], after[k], rtol=0, atol=1e-6)  # kept, barely trained
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("classifier.6"))


def test_init_from_refuses_what_cannot_fit(source, fashion_dir, photo_folder, tmp_path, cli, one_line_error):
    rc, _, err = cli("train", "--data-dir", fashion_dir, "--init-from", source, "--out", tmp_path / "a")
    one_line_error(rc, err, str(source), "3-channel", "1-channel")
    rc, _, err = cli("train", "--data", photo_folder, "--freeze", "features", "--out", tmp_path / "b")
    one_line_error(rc, err, "--freeze", "--init-from")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_features_of_a_folder(source, photo_folder, tmp_path, cli, one_line_error):
    out = tmp_path / "fc7.safetensors"
    rc, stdout, err = cli("features", source, photo_folder, "--layer", "fc7", "--out", out, "--workers", "0", "--json")
    assert rc == 0, err
    summary = json.loads(stdout)
    assert summary["images"] == 24 and summary["layer"] == "fc7"
    with safe_open(str(out), "pt") as f:
        features, labels, meta = f.get_tensor("features"), f.get_tensor("labels"), f.metadata()
    assert features.dtype == torch.float32 and features.shape == (24, summary["dim"])
    assert labels.dtype == torch.int64 and labels.tolist() == sorted(labels.tolist())  # class by class
    classes, paths = json.loads(meta["classes"]), json.loads(meta["paths"])
    assert classes == ["cat", "coffee", "rocket"] and len(paths) == 24
    assert all(f"/train/{classes[y]}/" in p for p, y in zip(paths, labels.tolist()))
    # the same numbers as the model's own penultimate layer on the evaluation path
    from alexnet.core.checkpoint import load_inference
    from alexnet.data.datasets import load_image, stored_transform

    loaded = load_inference(source, torch.device("cpu"))
    x = stored_transform(loaded.config.data.resize)(load_image(paths[5], 3))[None]
    with torch.no_grad():
        expected = loaded.model.penultimate(loaded.preprocess(x))
    torch.testing.assert_close(features[5:6], expected, rtol=1e-4, atol=1e-4)
    rc, _, err = cli("features", source, photo_folder, "--layer", "conv9", "--out", out)
    one_line_error(rc, err, "--layer conv9", "conv5", "fc7")
    rc, stdout, _ = cli("features", source, photo_folder, "--layer", "conv5", "--split", "val", "--out", out, "--json")
    assert rc == 0 and json.loads(stdout)["images"] == 9


def test_resume_auto_starts_then_continues(fashion_dir, tmp_path, cli):
    from tiny import tiny_train_argv

    out = tmp_path / "run"
    argv = tiny_train_argv(fashion_dir, 256, 128, "--out", out, "--resume", "auto")
    rc, stdout, err = cli(*argv, "--epochs", "1")
    assert rc == 0, err
    assert f"--resume auto: no {out / 'last.pt'} yet, starting a new run" in stdout
    rc, stdout, err = cli(*argv, "--epochs", "2")
    assert rc == 0, err
    assert f"--resume auto: continuing from {out / 'last.pt'}" in stdout and "resuming" in stdout
    assert [line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2"]


def test_a_run_that_did_not_learn_does_not_end_done(fashion_dir, tmp_path, cli):
    """An lr too small to move the loss, in fewer steps than the window check waits for."""
    from tiny import tiny_train_argv

    out = tmp_path / "run"
    rc, stdout, err = cli(*tiny_train_argv(fashion_dir, 256, 128, "--lr", "1e-9", "--epochs", "1", "--out", out))
    assert rc == 0, err
    last = stdout.strip().splitlines()
    assert not any(line.startswith("done") for line in last)
    assert any(line.startswith("finished with warnings:") for line in last)
    assert any("the network did not learn" in line and "--epochs" in line for line in last)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished with warnings" and summary["health"][-1]["kind"] == "not_learning"
    assert math.isfinite(summary["val"]["loss"])


def test_fine_tune_torchvision_weights_imported(photo_folder, tmp_path, cli):
    """import-torchvision's checkpoint (the owt network, 1000 ImageNet classes) onto the
    3-class folder, the classifier only: torchvision's features stay as they were."""
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), tmp_path / "alexnet-owt.pth")
    assert cli("import-torchvision", tmp_path / "alexnet-owt.pth", tmp_path / "owt.pt")[0] == 0
    out = tmp_path / "run"
    rc, stdout, err = cli(
        "train", "--data", photo_folder, "--init-from", tmp_path / "owt.pt", "--freeze", "features",
        "--epochs", "1", "--workers", "0", "--amp", "off", "--out", out,
    )  # fmt: skip
    assert rc == 0, err
    assert "new for 3 classes (it had 1000)" in stdout
    before, after = _weights(tmp_path / "owt.pt"), _weights(out / "last.pt")
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("features."))
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["name"] == "owt" and config["model"]["num_classes"] == 3
    assert config["data"]["std"] != [1.0, 1.0, 1.0]  # torchvision's normalisation came along

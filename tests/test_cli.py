"""End to end through the `alexnet` command: train -> evaluate -> predict, and bad input."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from tiny import tiny_train_argv


@pytest.mark.slow
def test_train_writes_its_outputs(fashion_run):
    for name in ("config.json", "metrics.csv", "last.pt", "best.pt", "model.safetensors"):
        assert (fashion_run / name).is_file(), name
    cfg = json.loads((fashion_run / "config.json").read_text())
    assert cfg["model"]["name"] == "small" and cfg["model"]["num_classes"] == 10
    assert cfg["model"]["in_channels"] == 1 and cfg["train"]["momentum"] == 0.9
    rows = list(csv.DictReader(open(fashion_run / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[-1]["val_top1"]) > 0.3  # chance is 0.1


@pytest.mark.slow
def test_evaluate_json(fashion_run, cli, fashion_dir):
    rc, out, _ = cli("evaluate", fashion_run / "last.pt", "--data-dir", fashion_dir, "--limit", "500", "--json")
    assert rc == 0
    r = json.loads(out)
    assert r["images"] == 500
    assert r["top1"] > 0.3 and r["top5"] >= r["top1"]
    assert r["top1_error"] == pytest.approx(1 - r["top1"])
    row = list(csv.DictReader(open(fashion_run / "metrics.csv")))[-1]
    assert r["top1"] == pytest.approx(float(row["val_top1"]))  # same 500 images as validation


@pytest.mark.slow
def test_safetensors_weights_evaluate_the_same(fashion_run, cli, fashion_dir):
    results = []
    for name in ("last.pt", "model.safetensors"):
        rc, out, _ = cli("evaluate", fashion_run / name, "--data-dir", fashion_dir, "--limit", "300", "--json")
        assert rc == 0
        results.append(json.loads(out))
    assert results[0]["top1"] == results[1]["top1"] and results[0]["loss"] == results[1]["loss"]


@pytest.mark.slow
def test_predict_fashion_samples(fashion_run, cli, fashion_dir, tmp_path):
    rc, out, _ = cli("samples", "--data-dir", fashion_dir, "--count", "20", "--out", tmp_path)
    assert rc == 0
    files = sorted(tmp_path.glob("*.png"))
    assert len(files) == 20
    rc, out, _ = cli("predict", fashion_run / "last.pt", *files, "--topk", "3", "--json")
    assert rc == 0
    results = json.loads(out)
    assert len(results) == 20
    correct = 0
    for r, f in zip(results, files):
        probs = [p["probability"] for p in r["predictions"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        truth = f.stem.split("_", 1)[1]
        correct += r["predictions"][0]["class"].replace("/", "-").replace(" ", "_") == truth
    assert correct >= 6  # far above chance (2 of 20) after two short epochs


@pytest.mark.slow
def test_predict_real_photos_any_mode(fashion_run, cli, photos):
    rc, out, err = cli("predict", fashion_run / "last.pt", *photos.values(), "--json")
    assert rc == 0, err
    results = json.loads(out)
    assert [r["image"] for r in results] == [str(p) for p in photos.values()]
    for r in results:
        assert len(r["predictions"]) == 5
        assert 0 < sum(p["probability"] for p in r["predictions"]) <= 1 + 1e-6


@pytest.mark.slow
def test_resume_continues_exactly(fashion_dir, tmp_path, cli):
    # a step schedule: the learning rate at a step does not depend on the planned length
    common = tiny_train_argv(fashion_dir, 600, 100, "--step-epochs", "1")
    assert cli(*common, "--epochs", "2", "--out", tmp_path / "straight")[0] == 0
    assert cli(*common, "--epochs", "1", "--out", tmp_path / "split")[0] == 0
    assert (
        cli(*common, "--epochs", "2", "--out", tmp_path / "split", "--resume", tmp_path / "split" / "last.pt")[0] == 0
    )
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    rows = list(csv.DictReader(open(tmp_path / "split" / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]


def test_summary_json(cli):
    rc, out, _ = cli("summary", "--model", "paper", "--json")
    assert rc == 0
    s = json.loads(out)
    assert s["params"] == 60_965_224 and round(s["macs"] / 1e6) == 724
    rc, out, _ = cli("summary", "--model", "small")
    assert rc == 0 and "1,218,514" in out


# ------------------------------------------------------------------------ bad input


@pytest.mark.slow
def test_bad_images(fashion_run, cli, tmp_path, one_line_error):
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for bad, needle in (
        (tmp_path / "missing.jpg", "no such file"),
        (tmp_path, "not a file"),
        (text, "not a readable image"),
        (empty, "not a readable image"),
    ):
        rc, _, err = cli("predict", fashion_run / "last.pt", bad)
        one_line_error(rc, err, str(bad), needle)


def test_bad_checkpoints(cli, tmp_path, photos, one_line_error):
    img = photos["astronaut.jpg"]
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(1000))
    raw_state = tmp_path / "state_dict.pt"
    torch.save({"features.0.weight": torch.zeros(1)}, raw_state)
    for bad in (tmp_path / "missing.pt", empty, garbage, raw_state):
        rc, _, err = cli("predict", bad, img)
        one_line_error(rc, err, str(bad))


@pytest.mark.slow
def test_mismatched_weights(fashion_run, cli, tmp_path, photos, one_line_error):
    ckpt = torch.load(fashion_run / "last.pt", weights_only=True)
    ckpt["config"]["model"]["width"] = 1.0  # claims another model than its weights
    bad = tmp_path / "other.pt"
    torch.save(ckpt, bad)
    rc, _, err = cli("evaluate", bad)
    one_line_error(rc, err, str(bad), "do not fit")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(cli, tmp_path, photos, one_line_error):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "alexnet-checkpoint", "payload": _Exploit(marker)}, evil, pickle_protocol=2)
    rc, _, err = cli("predict", evil, photos["astronaut.jpg"])
    one_line_error(rc, err, str(evil), "refused")
    assert not marker.exists()


def test_bad_options(cli, fashion_dir, one_line_error):
    rc, _, err = cli("train", "--data-dir", fashion_dir, "--dropout", "1.5")
    one_line_error(rc, err, "dropout")
    rc, _, err = cli("train", "--data-dir", fashion_dir, "--model", "paper", "--input-size", "32")
    one_line_error(rc, err, "too small")


def test_missing_folder_data(cli, tmp_path, one_line_error):
    rc, _, err = cli("train", "--data", tmp_path / "nowhere", "--epochs", "1")
    one_line_error(rc, err, "nowhere")


@pytest.mark.slow
def test_console_script_and_module_entry_points():
    r = subprocess.run(
        [sys.executable, "-m", "alexnet", "summary", "--model", "owt", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(r.stdout)["params"] == 61_100_840
    r = subprocess.run(
        [sys.executable, "-m", "alexnet", "predict", "/nonexistent.pt", "/x.jpg"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "/nonexistent.pt" in r.stderr


@pytest.mark.slow
def test_tensorboard_gets_scalars_and_filters(fashion_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(fashion_run / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "val/top1", "lr"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    assert [e.step for e in events.Scalars("val/top1")] == [2]  # the recipe validates at the end
    assert "conv1_filters" in tags["images"]


def test_tensorboard_is_optional(monkeypatch, tmp_path):
    import builtins

    from alexnet.run.tblog import TensorBoard

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    board = TensorBoard(tmp_path)
    board.epoch({"epoch": 1}, None)  # does nothing, breaks nothing
    board.close()
    assert not (tmp_path / "tensorboard").exists()


# Runs in a fresh interpreter: `alexnet --help` and every `alexnet COMMAND --help`, then
# reports the modules of torch and torchvision that were imported (there must be none).
HELP_WITHOUT_TORCH = """
import json, sys
import alexnet
from alexnet.apps.cli import build_parser, main
commands = next(a for a in build_parser()._actions if a.dest == "command").choices
codes = {}
for argv in [[], *([c] for c in commands)]:
    try:
        main([*argv, "--help"])
    except SystemExit as e:
        codes[" ".join(argv)] = e.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
print(json.dumps({"codes": codes, "heavy": heavy}), file=sys.stderr)
"""


@pytest.mark.slow  # a fresh interpreter: this one has imported torch already
def test_help_of_every_command_imports_no_torch():
    """The parser is built and every help printed before torch is imported (the 4 s it
    takes to import): options, recipe defaults and command names come from torch-free
    modules, and each command imports its work when it runs."""
    r = subprocess.run([sys.executable, "-c", HELP_WITHOUT_TORCH], capture_output=True, text=True, check=True)
    report = json.loads(r.stderr.strip().splitlines()[-1])
    assert len(report["codes"]) > 10 and set(report["codes"].values()) == {0}, report["codes"]
    assert "train" in report["codes"] and "usage: alexnet train" in r.stdout
    assert report["heavy"] == [], f"printing help imported {report['heavy'][:5]}"


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--lr", "-1"], "--lr must be positive"),
        (["--budget", "5q"], "--budget 5q"),
        (["--momentum", "1.5"], "--momentum must be in [0, 1)"),
        (["--val-every", "-1"], "--val-every must be at least 0"),
        (["--dropout", "1"], "--dropout must be in [0, 1)"),
        (["--limit-train", "0"], "--limit-train must be at least 1"),
        (["--schedule", "plateau", "--val-every", "0"], "--val-every 1"),
    ],
)
def test_a_bad_option_value_is_one_line_naming_the_option(cli, one_line_error, tmp_path, argv, needle):
    """Values the config refuses are refused before any work (no data read, nothing written)."""
    rc, out, err = cli("train", *argv, "--out", str(tmp_path / "run"))
    one_line_error(rc, err, needle)
    assert not (tmp_path / "run").exists()


def test_train_help_shows_each_recipes_default_and_never_none():
    """Options come from the config fields: the help says each recipe's default, and never
    argparse's "(default: None)"."""
    from alexnet.apps.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    text = sub.choices["train"].format_help()
    assert "default: None" not in text and "(default: none)" not in text
    assert "paper, finetune: 0.01; folder: 0.01 x sqrt(batch / 128); fashion-mnist: 0.06" in " ".join(text.split())
    for flag in ("--lr", "--weight-decay", "--init", "--mean-image", "--budget", "--resume", "--limit-train"):
        assert flag in text


@pytest.mark.slow
def test_evaluate_refuses_fp16_on_the_cpu(fashion_run, cli, one_line_error):
    rc, _, err = cli("evaluate", fashion_run / "last.pt", "--device", "cpu", "--amp", "fp16")
    one_line_error(rc, err, "--amp fp16", "CUDA only")

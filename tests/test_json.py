"""Valid JSON everywhere: every `--json` output and JSON file is RFC 8259 JSON, which strict
parsers (JavaScript's JSON.parse, jq, Go, Rust's serde) accept, even when a model diverged."""

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from torchvision.datasets import FashionMNIST

from alexnet.apps.cli import build_parser
from alexnet.apps.experiments import run as run_experiment
from alexnet.config import RunConfig
from alexnet.core.checkpoint import save_checkpoint, save_weights
from alexnet.core.model import AlexNet
from alexnet.core.recipes import resolve
from alexnet.core.rundir import METRIC_FIELDS, TEXT_FIELDS
from alexnet.run import jsonio
from alexnet.run.jsonio import NON_FINITE, sanitize, to_json, write_json

NAN, INF = float("nan"), float("inf")


def _refuse(name: str):
    raise ValueError(f"not RFC 8259 JSON: {name}")


def strict_loads(text: str):
    """json.loads as a strict parser reads: NaN, Infinity and -Infinity are errors."""
    return json.loads(text, parse_constant=_refuse)


# ------------------------------------------------------------------------------ the helper


def test_strict_loads_refuses_what_json_dumps_writes():
    with pytest.raises(ValueError, match="NaN"):
        strict_loads(json.dumps({"loss": NAN}))


@pytest.mark.parametrize("value, kind", [(NAN, "nan"), (INF, "inf"), (-INF, "-inf")])
def test_non_finite_becomes_null_with_a_record(value, kind):
    text = to_json({"loss": value, "top1": 0.5})
    assert strict_loads(text) == {"loss": None, "top1": 0.5, NON_FINITE: {"loss": kind}}


def test_nested_dicts_lists_and_tuples():
    obj = {
        "eigval": [1.0, NAN, (2.0, -INF)],
        "arms": {"a": {"mean": INF, "n": 2}},
        "queries": [{"distance": NAN, "index": 3}, {"distance": 1.5}],
    }
    assert strict_loads(to_json(obj)) == {
        "eigval": [1.0, None, [2.0, None]],
        "arms": {"a": {"mean": None, "n": 2, NON_FINITE: {"mean": "inf"}}},
        "queries": [{"distance": None, "index": 3, NON_FINITE: {"distance": "nan"}}, {"distance": 1.5}],
        NON_FINITE: {"eigval[1]": "nan", "eigval[2][1]": "-inf"},  # the list's own dict records
    }


def test_top_level_lists():
    # dicts in a list record their own; bare numbers have no dict to record in: null only
    assert sanitize([{"p": NAN}, {"p": 0.25}]) == [{"p": None, NON_FINITE: {"p": "nan"}}, {"p": 0.25}]
    assert sanitize([NAN, 1.0, [INF]]) == [None, 1.0, [None]]


def test_tensors_and_numpy_values():
    obj = {
        "t0": torch.tensor(NAN),
        "t1": torch.tensor([1.0, INF]),
        "ok": torch.tensor(3),
        "f32": np.float32(-INF),
        "f64": np.float64(0.5),
        "arr": np.array([[NAN, 2.0]]),
        "i64": np.int64(7),
        "flag": np.bool_(True),
    }
    assert strict_loads(to_json(obj)) == {
        "t0": None,
        "t1": [1.0, None],
        "ok": 3,
        "f32": None,
        "f64": 0.5,
        "arr": [[None, 2.0]],
        "i64": 7,
        "flag": True,
        NON_FINITE: {"t0": "nan", "t1[1]": "inf", "f32": "-inf", "arr[0][0]": "nan"},
    }


def test_finite_input_is_written_as_json_dumps_writes_it():
    obj = {"a": [1, 2.5, None, True], "b": {"c": "é", "d": (1, 2)}, "e": 1e-300}
    assert to_json(obj) == json.dumps(obj, indent=2)
    assert to_json(obj, indent=None) == json.dumps(obj)
    assert sanitize(obj) is not obj  # a copy: the caller's values are left alone


def test_a_clashing_record_field_raises():
    with pytest.raises(ValueError, match=NON_FINITE):
        to_json({"loss": NAN, NON_FINITE: "mine"})
    assert strict_loads(to_json({NON_FINITE: "mine"})) == {NON_FINITE: "mine"}  # nothing to record


def test_a_value_the_cleaner_misses_raises_instead_of_writing_nan(monkeypatch):
    monkeypatch.setattr(jsonio, "sanitize", lambda obj: obj)
    with pytest.raises(ValueError):
        to_json({"loss": NAN})


def test_write_json_is_atomic_and_strict(tmp_path):
    path = tmp_path / "sub" / "r.json"
    write_json(path, {"loss": NAN})
    text = path.read_text()
    assert text.endswith("}\n") and strict_loads(text) == {"loss": None, NON_FINITE: {"loss": "nan"}}
    with pytest.raises(ValueError):
        write_json(path, {"loss": NAN, NON_FINITE: 1})
    assert path.read_text() == text  # a failed write leaves the old file ...
    assert os.listdir(path.parent) == ["r.json"]  # ... and no temporary file


# ------------------------------------------------------------------------------ CLI, end to end


def _commands_with_json() -> set[str]:
    sub = build_parser()._subparsers._group_actions[0]
    return {name for name, p in sub.choices.items() if "--json" in p._option_string_actions}


CHECKPOINT_COMMANDS = ("evaluate", "predict", "filters", "neighbors", "features")


def test_every_json_command_is_covered():
    assert _commands_with_json() == {*CHECKPOINT_COMMANDS, "summary"}


def _with_weights(src: Path, dst: Path, fill) -> Path:
    """A copy of checkpoint `src` whose floating-point weights are `fill(tensor)`."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    ckpt["model"] = {k: fill(v) if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, dst)
    return dst


@pytest.fixture(scope="module")
def checkpoints(fashion_dir, tmp_path_factory) -> dict[str, Path]:
    """healthy: fashion_run's model, untrained (as valid for JSON as a trained one, and no
    training to wait for); nan: its weights all NaN (refused on load); overflow: finite
    weights so large that activations overflow, so the outputs (loss, distances) are NaN."""
    folder = tmp_path_factory.mktemp("json-checkpoints")
    cfg = resolve(
        "fashion-mnist", {"name": None, "width": 0.5}, {"data_dir": fashion_dir}, {"out": str(folder), "amp": "off"}
    )  # train writes the precision it chose, not auto
    torch.manual_seed(0)
    healthy = folder / "healthy.pt"
    save_checkpoint(
        healthy,
        {
            "config": cfg.to_dict(),
            "model": AlexNet(cfg.model).state_dict(),
            "epoch": 0,
            "classes": list(FashionMNIST.classes),
        },
    )
    return {
        "healthy": healthy,
        "nan": _with_weights(healthy, folder / "nan.pt", lambda v: torch.full_like(v, NAN)),
        "overflow": _with_weights(healthy, folder / "overflow.pt", lambda v: torch.full_like(v, 1e30)),
    }


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("json-image") / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(path)
    return path


def _folder(image: Path, tmp_path: Path) -> Path:
    """A one-class image folder holding `image`."""
    folder = tmp_path / "folder"
    (folder / "noise").mkdir(parents=True, exist_ok=True)
    (folder / "noise" / image.name).write_bytes(image.read_bytes())
    return folder


def _argv(command: str, ckpt: Path, fashion_dir: str, image: Path, tmp_path: Path) -> list:
    small = ["--device", "cpu", "--batch-size", 64]
    if command == "features":
        return [
            "features",
            ckpt,
            _folder(image, tmp_path),
            "--out",
            tmp_path / "f.safetensors",
            "--workers",
            0,
            "--json",
        ]
    return {
        "evaluate": ["evaluate", ckpt, "--data-dir", fashion_dir, "--limit", 64, *small],
        "predict": ["predict", ckpt, image, "--device", "cpu"],
        "filters": ["filters", ckpt, "--out", tmp_path / "filters.png"],
        "neighbors": [
            "neighbors",
            ckpt,
            "--data-dir",
            fashion_dir,
            "--limit-train",
            64,
            "--queries",
            2,
            "--k",
            2,
            "--out",
            tmp_path / "neighbors.png",
            *small,
        ],
    }[command] + ["--json"]


@pytest.mark.parametrize("weights", ["healthy", "nan", "overflow"])
@pytest.mark.parametrize("command", CHECKPOINT_COMMANDS)
def test_json_output_is_strict(command, weights, checkpoints, fashion_dir, image, tmp_path, cli):
    rc, out, err = cli(*_argv(command, checkpoints[weights], fashion_dir, image, tmp_path))
    if weights == "healthy":
        assert rc == 0, err
    if rc != 0:  # a refusal: a one-line error, and nothing on stdout a parser could choke on
        assert rc == 2 and out == "" and err.startswith("alexnet: error: ") and "Traceback" not in err, err
        return
    r = strict_loads(out)
    if weights == "overflow" and command == "evaluate":  # the cases json.dumps wrote as NaN
        assert r["loss"] is None and r[NON_FINITE]["loss"] == "nan"
    if weights == "overflow" and command == "neighbors":
        for n in (n for q in r["queries"] for n in q["neighbors"]):
            assert n["distance"] is None and n[NON_FINITE] == {"distance": "nan"}


def test_weights_that_hold_nan_are_refused_before_any_output(checkpoints, fashion_dir, image, tmp_path, cli):
    for command in CHECKPOINT_COMMANDS:
        rc, out, err = cli(*_argv(command, checkpoints["nan"], fashion_dir, image, tmp_path))
        assert rc == 2 and out == "" and "NaN" in err, (command, err)


def test_summary_json_is_strict(cli):
    rc, out, _ = cli("summary", "--model", "small", "--in-channels", 1, "--num-classes", 10, "--json")
    assert rc == 0 and strict_loads(out)["params"] > 0


# ------------------------------------------------------------------------------ files written


@pytest.mark.slow
def test_config_json_of_a_run_is_strict(fashion_run):
    assert strict_loads((fashion_run / "config.json").read_text())["model"]["name"] == "small"


def test_safetensors_metadata_is_strict(checkpoints, tmp_path):
    ckpt = torch.load(checkpoints["healthy"], weights_only=True)
    cfg = RunConfig.from_dict(ckpt["config"])
    save_weights(tmp_path / "m.safetensors", AlexNet(cfg.model), cfg, ckpt["classes"])
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        meta = f.metadata()
    for key in ("config", "classes", "class_names"):
        strict_loads(meta[key])


def test_pca_and_pack_files_are_strict(imagenet, tmp_path, cli):
    rc, out, err = cli("pca", imagenet, "--workers", 0, "--out", tmp_path / "pca.json")
    assert rc == 0, err
    assert strict_loads(out) == strict_loads((tmp_path / "pca.json").read_text())
    rc, _, err = cli("pack", imagenet, tmp_path / "store", "--resize", 40, "--workers", 0)
    assert rc == 0, err
    assert strict_loads((tmp_path / "store" / "pack.json").read_text())["splits"]["train"]["count"] == 12


def _diverged_train(cfg, limit_train=None, limit_val=None):
    """A stand-in for train(): the metrics.csv of a run whose loss and accuracy went NaN."""
    os.makedirs(cfg.train.out, exist_ok=True)
    with open(Path(cfg.train.out) / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        w.writeheader()
        w.writerow(
            {k: 1 for k in METRIC_FIELDS if k not in TEXT_FIELDS}
            | {"train_loss": "nan", "val_loss": "inf", "val_top1": "nan", "train_acc": 0.5}
        )


def test_experiment_results_of_a_diverged_run_are_strict(tmp_path):
    r = run_experiment("lrn", seeds=1, quick=True, out=str(tmp_path), train_fn=_diverged_train)
    assert math.isnan(r["arms"]["LRN"]["test_error"]["mean"])  # the returned values are untouched
    saved = strict_loads((tmp_path / "lrn" / "results.json").read_text())
    assert saved["arms"]["LRN"]["test_error"]["mean"] is None
    assert saved["arms"]["LRN"]["test_error"][NON_FINITE] == {"mean": "nan"}
    assert saved["effect"][NON_FINITE] == {"test_error_difference": "nan"}

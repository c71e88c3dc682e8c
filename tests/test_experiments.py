import csv
import json
import os

import pytest
from PIL import Image

from alexnet.apps import experiments
from alexnet.apps.cli import main
from alexnet.apps.experiments import EXPERIMENTS, crossing, run, run_key
from alexnet.core.recipes import resolve
from alexnet.core.rundir import METRIC_FIELDS


def fake_train(curves):
    """A stand-in for train(): writes the metrics.csv an arm would, from known curves."""

    def train(cfg):
        m = cfg.model
        arm = {"relu": "a", "tanh": "b"}.get(m.activation, "a")
        if not m.lrn or m.pooling == "nonoverlap" or m.dropout == 0 or not m.groups:
            arm = "b"
        train_err, test_err, seconds = curves[arm]
        out = cfg.train.out
        os.makedirs(out, exist_ok=True)
        with open(f"{out}/metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            w.writeheader()
            for e, (tr, te, s) in enumerate(zip(train_err, test_err, seconds), start=1):
                w.writerow(
                    {
                        "epoch": e,
                        "step": e,
                        "lr": 0.1,
                        "train_loss": 1,
                        "train_acc": 1 - tr,
                        "val_loss": 1,
                        "val_top1": 1 - te,
                        "val_top5": 1,
                        "epoch_seconds": s,
                        "train_images_per_s": 1,
                    }
                )

    return train


CURVES = {
    "a": ([0.5, 0.2, 0.1, 0.08], [0.3, 0.15, 0.12, 0.11], [10, 10, 10, 10]),
    "b": ([0.6, 0.4, 0.25, 0.1], [0.35, 0.2, 0.15, 0.14], [20, 20, 20, 20]),
}


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


@pytest.mark.slow  # trains 2 arms for 2 epochs
def test_quick_experiment_through_the_cli(fashion_dir, tmp_path, capsys):
    assert main(["experiment", "lrn", "--quick", "--data-dir", fashion_dir, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| LRN |" in out and "| no LRN |" in out
    r = json.loads((tmp_path / "lrn" / "results.json").read_text())
    assert r["epochs"] == 2 and r["limit_train"] == 3000
    assert 0 < r["arms"]["LRN"]["test_error"]["mean"] < 0.9


def _counting(curves, calls):
    fake = fake_train(curves)

    def train(cfg):
        calls.append((cfg, cfg.data.limit_train, cfg.data.limit_val))
        fake(cfg)

    return train


def test_run_key_is_the_configuration_not_the_folder():
    def key(out, limit=3000, seed=0, **options):
        cfg = resolve(
            "fashion-mnist",
            {"name": None, **options},
            {"data_dir": None},
            {"epochs": 2, "seed": seed, "out": out, "val_every": 1},
        )
        return run_key(cfg, limit, 1000)

    assert key("a/ReLU-seed0", activation="relu") == key("b/LRN-seed0", lrn=True) == key("c/x")
    assert key("a", dropout=0.5) != key("a")  # the recipe's dropout is 0.25
    assert key("a", seed=1) != key("a") and key("a", limit=None) != key("a")


def test_all_trains_each_distinct_configuration_once(tmp_path, monkeypatch, capsys):
    import alexnet.core.train

    calls, plotted = [], {}
    monkeypatch.setattr(alexnet.core.train, "train", _counting(CURVES, calls))
    # the plots are tested above; here what they are drawn from: every arm's seeds
    monkeypatch.setattr(experiments, "plot", lambda results, runs, path: plotted.update({results["experiment"]: runs}))
    assert main(["experiment", "all", "--quick", "--seeds", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # 5 experiments x 2 arms x 2 seeds = 20 runs; the recipe unchanged (ReLU, LRN, 3/2
    # pooling, two towers) is one configuration: 7 distinct ones per seed
    assert len(calls) == 14
    assert len({run_key(*c) for c in calls}) == 14
    assert all(c[1:] == (3000, 1000) and c[0].train.epochs == 2 for c in calls)
    assert sorted(c[0].model.dropout for c in calls).count(0.5) == 2  # the dropout baseline: its own runs
    assert "14 runs trained, 6 reused" in out
    expected = {
        "relu-vs-tanh": [],
        "dropout": [],
        "lrn": ["LRN"],
        "pooling": ["overlapping 3/2"],
        "groups": ["two towers"],
    }
    for name, arms in EXPERIMENTS.items():
        folder = tmp_path / name
        r = json.loads((folder / "results.json").read_text())
        assert [(x["arm"], x["seed"], x["run"]) for x in r["reused"]] == [
            (arm, seed, os.path.join("relu-vs-tanh", f"ReLU-seed{seed}")) for arm in expected[name] for seed in range(2)
        ]
        paper, other = (r["arms"][a] for a in arms.arms)  # every arm, every seed
        assert paper["test_error"]["n"] == other["test_error"]["n"] == 2
        assert paper["test_error"]["mean"] == pytest.approx(0.11)
        assert other["test_error"]["mean"] == pytest.approx(0.14)
        assert list(plotted[name]) == list(arms.arms) and all(len(v) == 2 for v in plotted[name].values())
        md = (folder / "results.md").read_text()
        assert ("Reused" in md) == bool(expected[name])
        for arm in expected[name]:
            assert f"{name}: {arm}, seed 1: the same configuration as" in out
            run_dir = folder / f"{arm.replace(' ', '-').replace('/', '')}-seed1"
            assert (run_dir / "metrics.csv").read_text() == (
                tmp_path / "relu-vs-tanh" / "ReLU-seed1" / "metrics.csv"
            ).read_text()

    # one experiment alone trains all its arms again, in its own folders (not through
    # the links `all` left, into relu-vs-tanh's runs)
    before = (tmp_path / "relu-vs-tanh" / "ReLU-seed0" / "metrics.csv").read_text()
    calls.clear()
    monkeypatch.setattr(alexnet.core.train, "train", _counting({"a": CURVES["b"], "b": CURVES["a"]}, calls))
    assert main(["experiment", "lrn", "--quick", "--out", str(tmp_path)]) == 0
    assert len(calls) == 2
    assert not (tmp_path / "lrn" / "LRN-seed0").is_symlink()
    assert (tmp_path / "relu-vs-tanh" / "ReLU-seed0" / "metrics.csv").read_text() == before
    r = json.loads((tmp_path / "lrn" / "results.json").read_text())
    assert r["reused"] == [] and r["arms"]["LRN"]["test_error"]["mean"] == pytest.approx(0.14)

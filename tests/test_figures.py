"""The paper's figures as commands: filters (Figure 3), neighbors (Figure 4), plot (curves)."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.apps import figures
from alexnet.config import DataConfig, RunConfig
from alexnet.core.checkpoint import load_inference, save_checkpoint
from alexnet.core.model import build_model
from alexnet.data.datasets import load_split

CPU = torch.device("cpu")


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()  # the whole file decodes
        return img.size


def save_untrained(path, model, data: DataConfig):
    """An untrained model as a checkpoint, as `alexnet train` would write one."""
    cfg = RunConfig(model=model.config, data=data)
    save_checkpoint(
        path,
        {
            "config": cfg.to_dict(),
            "model": model.state_dict(),
            "epoch": 0,
            "classes": [f"class_{i}" for i in range(model.config.num_classes)],
        },
    )
    return path


@pytest.fixture(scope="module")
def paper_model():
    torch.manual_seed(0)
    return build_model("paper", num_classes=4)


# ------------------------------------------------------------------------------ filters


def test_filter_grid_has_one_tile_per_kernel(paper_model):
    layouts = {
        "paper": figures.filter_layout(paper_model),
        "small": figures.filter_layout(build_model("small")),
        "owt": figures.filter_layout(build_model("owt", num_classes=4)),
        "paper-ungrouped": figures.filter_layout(build_model("paper-ungrouped", num_classes=4)),
    }
    tiles = {name: [g["tiles"] for g in layout] for name, layout in layouts.items()}
    assert tiles == {"paper": [48, 48], "small": [18, 18], "owt": [64], "paper-ungrouped": [96]}
    assert [g["title"] for g in layouts["paper"]] == ["tower 1 (GPU 1)", "tower 2 (GPU 2)"]
    for layout in layouts.values():
        for g in layout:
            assert g["rows"] * g["cols"] >= g["tiles"] > (g["rows"] - 1) * g["cols"]
    # tower i holds conv1's i-th block of kernels, each scaled to [0, 1] on its own
    grids = figures.filter_grids(paper_model)
    w = paper_model.features[0].weight.detach()
    assert torch.allclose(grids[1].kernels[0], figures.normalise_kernels(w[48:49])[0])
    flat = torch.cat([g.kernels for g in grids]).flatten(1)
    assert torch.allclose(flat.min(1).values, torch.zeros(96))
    assert torch.allclose(flat.max(1).values, torch.ones(96))


def test_filters_command_paper_rgb_two_towers(paper_model, tmp_path, cli):
    ckpt = save_untrained(tmp_path / "paper.pt", paper_model, DataConfig(name="imagenet", mean_image=False))
    rc, out, err = cli("filters", ckpt, "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert r["out"] == str(tmp_path / "conv1_filters.png")  # default: beside the checkpoint
    assert [g["tiles"] for g in r["grids"]] == [48, 48]
    # two 6 x 8 grids of 0.6-inch tiles: (16 * 0.6 + 0.8) x (6 * 0.6 + 0.8) inches at 100 dpi
    assert png_size(r["out"]) == tuple(r["size"]) == (1040, 440)
    with Image.open(r["out"]) as img:
        rgb = np.asarray(img.convert("RGB")).astype(int)
    assert (rgb[..., 0] != rgb[..., 1]).any()  # colour kernels


@pytest.mark.slow
def test_filters_command_owt_one_grid_and_trained_small(fashion_run, tmp_path, cli):
    owt = save_untrained(
        tmp_path / "owt.pt", build_model("owt", num_classes=4), DataConfig(name="imagenet", mean_image=False)
    )
    rc, out, err = cli("filters", owt, "--out", tmp_path / "owt.png")
    assert rc == 0, err
    assert "64 conv1 kernels" in out
    assert png_size(tmp_path / "owt.png") == (640, 500)  # one 7 x 10 grid
    # the trained grayscale run (small at width 0.5: 2 x 9 kernels)
    rc, out, err = cli("filters", fashion_run / "last.pt", "--out", tmp_path / "small.png", "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert [g["tiles"] for g in r["grids"]] == [9, 9]
    grids = figures.filter_grids(load_inference(fashion_run / "last.pt", CPU).model)
    w, h = figures.filters_figsize(grids)
    assert png_size(tmp_path / "small.png") == (round(w * figures.DPI), round(h * figures.DPI)) == (560, 260)


# ------------------------------------------------------------------------------ neighbors


@pytest.mark.slow
def test_neighbors_streaming_equals_brute_force(fashion_run, fashion_dir):
    loaded = load_inference(fashion_run / "last.pt", CPU)
    data = dataclasses.replace(loaded.config.data, data_dir=fashion_dir, limit_train=300)
    train = load_split(True, data, 64, ordered=True)  # 5 batches, the last partial
    picks = [0, 77, 299]
    queries = train.loader.images[picks]  # training images as queries
    found = figures.nearest_neighbors(loaded, queries, train.loader, 5)
    assert found["train_images"] == 300
    assert found["indices"][:, 0].tolist() == picks  # each is its own nearest neighbour
    assert found["distances"][:, 0].abs().max() < 1e-4
    assert (found["distances"].diff(dim=1) >= 0).all()

    # brute force: every feature at once, distances in float64
    feats = figures.fc7_features(loaded, train.loader.images).double()
    q = figures.fc7_features(loaded, queries).double()
    dist = ((q[:, None, :] - feats[None, :, :]) ** 2).sum(-1).sqrt()
    best = dist.sort(dim=1, stable=True)
    assert torch.equal(found["indices"], best.indices[:, :5])
    assert torch.allclose(found["distances"].double(), best.values[:, :5], atol=1e-4)


@pytest.mark.slow
def test_neighbors_command(fashion_run, fashion_dir, tmp_path, cli):
    common = [
        "neighbors",
        fashion_run / "last.pt",
        "--data-dir",
        fashion_dir,
        "--limit-train",
        300,
        "--batch-size",
        64,
        "--json",
    ]
    rc, out, err = cli(*common, "--queries", 3, "--k", 4, "--out", tmp_path / "val.png")
    assert rc == 0, err
    r = json.loads(out)
    assert r["train_images"] == 300 and r["k"] == 4 and len(r["queries"]) == 3
    for q in r["queries"]:
        assert q["split"] == "val" and 0 <= q["index"] < 10_000
        d = [n["distance"] for n in q["neighbors"]]
        assert len(d) == 4 and d == sorted(d) and d[0] > 0
        assert all(0 <= n["index"] < 300 for n in q["neighbors"])
    # one row per query, the query and its k neighbours: (4 + 1) x 3 cells of 1.6 inches
    assert png_size(tmp_path / "val.png") == tuple(r["size"]) == (800, 480)
    rc2, out2, _ = cli(*common, "--queries", 3, "--k", 4, "--out", tmp_path / "again.png")
    assert json.loads(out2)["queries"] == r["queries"]  # the seed fixes the queries

    rc, out, err = cli(
        *common, "--queries", 2, "--k", 3, "--query-split", "train", "--seed", 1, "--out", tmp_path / "train.png"
    )
    assert rc == 0, err
    for q in json.loads(out)["queries"]:
        assert q["neighbors"][0]["index"] == q["index"] and q["neighbors"][0]["distance"] < 1e-4
    assert png_size(tmp_path / "train.png") == (640, 320)


def test_neighbors_image_folder(imagenet, tmp_path, cli):
    model = build_model("small", in_channels=3, num_classes=3, input_size=32)
    data = DataConfig(name=str(imagenet), resize=36, mean_image=False, workers=0)
    ckpt = save_untrained(tmp_path / "folder.pt", model, data)
    rc, out, err = cli(
        "neighbors", ckpt, "--query-split", "train", "--queries", 2, "--k", 3, "--batch-size", 5, "--json"
    )
    assert rc == 0, err
    r = json.loads(out)
    assert r["train_images"] == 12 and r["out"] == str(tmp_path / "neighbors.png")
    for q in r["queries"]:
        assert q["neighbors"][0]["index"] == q["index"] and q["neighbors"][0]["distance"] < 1e-4
    assert png_size(r["out"]) == (640, 320)
    rc, out, err = cli("neighbors", ckpt, "--queries", 2, "--k", 2, "--out", tmp_path / "v.png")
    assert rc == 0, err
    assert "val #" in out and png_size(tmp_path / "v.png") == (480, 320)


# ------------------------------------------------------------------------------ plot


@pytest.mark.slow
def test_plot_fashion_run(fashion_run, tmp_path, cli):
    rc, out, err = cli("plot", fashion_run, "--out", tmp_path / "curves.png")
    assert rc == 0, err
    assert "2 epochs" in out
    assert png_size(tmp_path / "curves.png") == (1500, 400)  # figsize 15 x 4 at 100 dpi
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(fashion_run / "metrics.csv", run_dir)
    assert cli("plot", run_dir)[0] == 0
    assert png_size(run_dir / "curves.png") == (1500, 400)  # default: RUN_DIR/curves.png


# ------------------------------------------------------------------------------ bad input


@pytest.mark.slow
def test_bad_input(fashion_run, tmp_path, cli, one_line_error):
    missing = tmp_path / "missing.pt"
    for cmd in ("filters", "neighbors"):
        rc, _, err = cli(cmd, missing)
        one_line_error(rc, err, str(missing), "no such checkpoint")
    rc, _, err = cli("neighbors", fashion_run / "last.pt", "--k", 0)
    one_line_error(rc, err, "--k")
    rc, _, err = cli("plot", tmp_path / "nowhere")
    one_line_error(rc, err, str(tmp_path / "nowhere" / "metrics.csv"))
    rc, _, err = cli("plot", tmp_path)
    one_line_error(rc, err, str(tmp_path / "metrics.csv"), "no such file")
    (tmp_path / "metrics.csv").write_text("")
    rc, _, err = cli("plot", tmp_path)
    one_line_error(rc, err, str(tmp_path / "metrics.csv"), "empty")
    header = (fashion_run / "metrics.csv").read_text().splitlines()[0]
    (tmp_path / "metrics.csv").write_text(header + "\n")
    rc, _, err = cli("plot", tmp_path)
    one_line_error(rc, err, str(tmp_path / "metrics.csv"), "empty")
    assert not (tmp_path / "curves.png").exists()

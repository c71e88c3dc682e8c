"""What `alexnet serve` computes, without HTTP (inspection.py): layers and towers, tile
grids, occlusion bounds, uploads, and the fc7 index's cache."""

import base64
import dataclasses
import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.apps import inspection, neighbors
from alexnet.apps.predict import predict_files
from alexnet.config import DataConfig, RunConfig
from alexnet.core.checkpoint import Inference, load_inference, save_checkpoint
from alexnet.core.model import build_model
from alexnet.data.loaders import InMemoryLoader, ShardedBatches, Split
from alexnet.run.distributed import Dist
from alexnet.run.errors import UserError

CPU = torch.device("cpu")


def decode(url: str) -> Image.Image:
    assert url.startswith(inspection.PNG_URL)
    img = Image.open(io.BytesIO(base64.b64decode(url[len(inspection.PNG_URL) :])))
    assert img.format == "PNG"
    img.load()
    return img


def inference(model, data: DataConfig, mean_image=None) -> Inference:
    classes = [f"c{i}" for i in range(model.config.num_classes)]
    return Inference.of(model, RunConfig(model=model.config, data=data), classes, mean_image=mean_image)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = build_model("small", width=0.5, init="kaiming")
    return inference(model, DataConfig(name="fashion-mnist", resize=28, mean=(72.94,), std=(90.02,), mean_image=False))


@pytest.fixture(scope="module")
def paper():
    torch.manual_seed(0)
    return inference(build_model("paper", num_classes=5), DataConfig(name="nowhere", mean_image=False))


def image(channels: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (channels, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )


# ------------------------------------------------------------------ layers and towers


def test_stages_are_the_conv_stages_and_hidden_fc_layers(paper):
    stages = inspection.stages(paper.model)
    assert [s.name for s in stages] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    # §3.2: every conv layer's output is split over the two GPUs (conv3 reads both halves,
    # but runs half on each: conv4 reads its output grouped)
    assert [s.towers for s in stages] == [2, 2, 2, 2, 2, 1, 1]
    shapes = {d["name"]: d["shape"] for d in inspection.layer_shapes(paper)}
    assert shapes == {
        "conv1": [96, 27, 27],
        "conv2": [256, 13, 13],
        "conv3": [384, 13, 13],
        "conv4": [384, 13, 13],
        "conv5": [256, 6, 6],
        "fc6": [4096],
        "fc7": [4096],
    }
    ungrouped = build_model("paper-ungrouped", num_classes=5)
    assert [s.towers for s in inspection.stages(ungrouped)] == [1] * 7
    assert inspection.towers(paper.model) == 2 and inspection.towers(ungrouped) == 1
    owt = build_model("owt", num_classes=5)  # dropout before fc6/fc7: the stage is still the ReLU
    assert [type(s.module).__name__ for s in inspection.stages(owt)][-2:] == ["ReLU", "ReLU"]


def test_captured_outputs_are_the_stage_outputs(small):
    x = inspection.network_input(small, image(1, 28))
    out = inspection.capture(small, x)
    feats = list(small.model.features)
    convs = [i for i, m in enumerate(feats) if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        conv2 = small.model.features[: convs[2]](x)  # conv2 with its ReLU, LRN and pool
        fc7 = small.model.penultimate(x)
    assert torch.equal(out["conv2"], conv2)
    assert torch.equal(out["fc7"], fc7)
    assert (out["fc6"] >= 0).all()  # after the ReLU


def test_activation_grids_crop_to_each_channel(small):
    img = image(1, 28, seed=3)
    r = inspection.activations(small, img)
    assert [layer["name"] for layer in r["layers"]] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    out = inspection.capture(small, inspection.network_input(small, img))
    for layer in r["layers"][:5]:
        c, h, w = layer["shape"]
        assert [t["channels"] for t in layer["towers"]] == [[0, c // 2], [c // 2, c]]
        for t in layer["towers"]:
            grid = np.asarray(decode(t["grid"]))
            assert t["tile"] == [h, w] and grid.shape == (t["rows"] * h, t["cols"] * w)
            assert t["rows"] * t["cols"] >= t["channels"][1] - t["channels"][0]
            # the last channel of the tower, cropped from its cell, is that channel stretched
            k = t["channels"][1] - t["channels"][0] - 1
            row, col = divmod(k, t["cols"])
            tile = grid[row * h : (row + 1) * h, col * w : (col + 1) * w].astype(int)
            a = out[layer["name"]][0, t["channels"][1] - 1]
            if a.max() > a.min():
                expected = ((a - a.min()) / (a.max() - a.min()) * 255).round().int().numpy()
                assert np.abs(tile - expected).max() <= 1
            else:
                assert (tile == 0).all()  # a constant (dead) channel is black
    for layer in r["layers"][5:]:
        n = layer["shape"][0]
        assert decode(layer["strip"]).size == (layer["cols"], layer["rows"])
        assert layer["cols"] * layer["rows"] >= n > layer["cols"] * (layer["rows"] - 1)


def test_predict_ten_patches_average_the_softmax(paper):
    img = image(3, 256, seed=1)
    one = inspection.classify_image(paper, img, topk=5)
    ten = inspection.classify_image(paper, img, topk=2, ten_crop=True)
    assert one["patches"] == 1 and ten["patches"] == 10 and len(ten["predictions"]) == 2
    assert decode(one["input"]).size == (227, 227) and decode(one["input"]).mode == "RGB"
    assert one["input"] == ten["input"]  # the centre patch either way
    views = torch.cat(paper.preprocess.ten_crop(img[None]))
    with torch.no_grad():
        expected = torch.softmax(paper.model(views), 1).mean(0)
    got = {p["class"]: p["probability"] for p in ten["predictions"]}
    top = expected.topk(2)
    assert list(got) == [paper.classes[i] for i in top.indices.tolist()]
    assert np.allclose(list(got.values()), top.values.tolist(), atol=1e-6)
    probs = [p["probability"] for p in one["predictions"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    with pytest.raises(UserError, match="topk"):
        inspection.classify_image(paper, img, topk=0)


def test_predict_serve_and_the_precision_rule_are_one_inference_path(small, tmp_path):
    """predict's files, serve's upload and Inference.probabilities give the same numbers,
    in the precision runtime.stored_precision allows: an fp16 run's checkpoint in fp32 on
    the CPU."""
    cfg = dataclasses.replace(small.config, train=dataclasses.replace(small.config.train, amp="fp16"))
    ckpt = tmp_path / "fp16.pt"
    save_checkpoint(ckpt, {"config": cfg.to_dict(), "model": small.model.state_dict(), "classes": small.classes})
    loaded = load_inference(ckpt, CPU)
    assert loaded.precision == "off" and load_inference(ckpt, CPU, amp="bf16").precision == "bf16"
    img = image(1, 28, seed=3)
    Image.fromarray(img[0].numpy()).save(tmp_path / "x.png")
    [files] = predict_files(str(ckpt), [str(tmp_path / "x.png")], topk=4, device="cpu")
    page = inspection.classify_image(loaded, img, topk=4)
    top = loaded.probabilities(img[None])[0].topk(4)
    assert [p["index"] for p in files["predictions"]] == top.indices.tolist()
    assert [p["probability"] for p in files["predictions"]] == top.values.tolist()
    assert [p["probability"] for p in page["predictions"]] == top.values.tolist()
    ten = loaded.probabilities(img[None], ten_crop=True)[0]
    [files] = predict_files(str(ckpt), [str(tmp_path / "x.png")], topk=1, device="cpu", ten_crop=True)
    assert files["predictions"][0]["probability"] == ten.max().item()


# ------------------------------------------------------------------ occlusion


@pytest.mark.parametrize(
    "size, window, stride, expect",
    [
        (28, None, None, (4, 2, 13)),  # input // 7 and half of it: 169 windows
        (227, None, None, (32, 16, 14)),  # the paper's input: 196 windows, the last at the edge
        (28, 1, 1, (1, 1, 28)),  # 784 windows: within the bound
        (227, 3, 1, None),  # 225 x 225 windows asked: the stride is raised
    ],
)
def test_occlusion_grid_is_bounded_and_covers_the_input(size, window, stride, expect):
    w, s, starts = inspection.occlusion_grid(size, window, stride)
    assert len(starts) ** 2 <= inspection.MAX_OCCLUSION_POSITIONS
    assert starts[0] == 0 and starts[-1] == size - w and all(b - a <= s for a, b in zip(starts, starts[1:]))
    if expect:
        assert (w, s, len(starts)) == expect
    else:
        # the smallest stride that keeps to the bound: one less would give more windows
        assert w == 3 and s == 8 and len(range(0, size - w + 1, s - 1)) ** 2 > inspection.MAX_OCCLUSION_POSITIONS


def test_occlusion_grid_refuses_bad_windows():
    for window, stride in ((0, None), (29, None), (4, 0)):
        with pytest.raises(UserError):
            inspection.occlusion_grid(28, window, stride)


def test_occlusion_map(small):
    r = inspection.occlusion(small, image(1, 28, seed=2))
    assert (r["window"], r["stride"], r["positions"]) == (4, 2, 169)
    assert decode(r["heatmap"]).size == (28, 28) and decode(r["heatmap"]).mode == "RGB"
    assert decode(r["overlay"]).size == (28, 28)
    lo, hi = r["range"]
    assert 0 <= lo <= hi <= 1 and r["class"] in small.classes


# ------------------------------------------------------------------ uploads


def test_decode_upload(tmp_path, monkeypatch):
    made = []
    mkstemp = inspection.tempfile.mkstemp

    def recording(*args, **kwargs):
        made.append(mkstemp(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(inspection.tempfile, "mkstemp", recording)
    buf = io.BytesIO()
    Image.fromarray(np.arange(64 * 48, dtype=np.uint32).reshape(48, 64).astype(np.uint8)).save(buf, "PNG")
    data = buf.getvalue()
    img = inspection.decode_upload(data, 3, 32)
    assert img.shape == (3, 32, 32) and img.dtype == torch.uint8
    with pytest.raises(UserError, match="the upload: not a readable image") as e:
        inspection.decode_upload(data[: len(data) // 2], 1, 28)
    assert "alexnet-upload" not in str(e.value)  # the temporary file's name is not shown
    with pytest.raises(UserError, match="empty"):
        inspection.decode_upload(b"", 1, 28)
    from test_hostile_input import png_header_bomb

    bomb = png_header_bomb(tmp_path / "bomb.png", 30000, 30000).read_bytes()
    with pytest.raises(inspection.ImageTooLarge, match="decompression bomb"):
        inspection.decode_upload(bomb, 1, 28)
    assert len(made) == 3 and not any(os.path.exists(path) for _, path in made)  # the temporary files are gone


def test_filters_one_grid_per_tower(paper):
    r = inspection.filters(paper.model)
    assert [t["title"] for t in r["towers"]] == ["tower 1 (GPU 1)", "tower 2 (GPU 2)"]
    for t in r["towers"]:
        img = decode(t["grid"])
        # 48 kernels of 11 x 11 in 6 rows of 8, a 1-pixel line between them
        assert (t["rows"], t["cols"], t["tile"]) == (6, 8, [11, 11])
        assert img.size == (8 * 12 - 1, 6 * 12 - 1) and img.mode == "RGB"


# ------------------------------------------------------------------ the fc7 index


def split_of(images: torch.Tensor, fingerprint: str) -> Split:
    labels = torch.arange(images.shape[0]) % 3
    loader = InMemoryLoader(images, labels, ShardedBatches(images.shape[0], 16, Dist(), shuffle=False))
    return Split(loader, ["a", "b", "c"], images.shape[0], fingerprint)


def test_fc7_index_is_cached_and_rebuilt_when_stale(small, tmp_path):
    ckpt = tmp_path / "last.pt"
    save_checkpoint(
        ckpt, {"config": small.config.to_dict(), "model": small.model.state_dict(), "classes": small.classes}
    )
    images = torch.stack([image(1, 28, seed=i) for i in range(40)])
    split = split_of(images, "synthetic-40")
    logs = []

    def index(split=split, limit=None):
        key = neighbors.checkpoint_key(ckpt)
        return neighbors.fc7_index(small, split, ckpt, key, limit, log=logs.append)

    first = index()
    assert first.path == neighbors.index_paths(ckpt, "synthetic-40")[0] and first.path.parent == tmp_path
    assert first.features.dtype == torch.float16 and first.features.shape == (40, 384) and len(logs) == 1
    second = index()
    assert second.built_seconds == 0 and len(logs) == 1 and torch.equal(second.features, first.features)
    assert torch.equal(second.labels, torch.arange(40) % 3)
    # the codes are the model's fc7, rounded to fp16
    fc7 = neighbors.fc7_features(small, images)
    assert torch.equal(first.features, fc7.half())
    index(limit=40)  # another limit: another index
    assert len(logs) == 2
    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a checkpoint written again
    index()
    assert len(logs) == 3
    other = index(split_of(images[:30], "synthetic-30"))  # other data: its own file
    assert other.size == 30 and other.path != first.path and len(logs) == 4
    assert index().built_seconds == 0 and len(logs) == 4  # the first data's file is still there
    first.path.write_bytes(b"garbage")  # a damaged cache is rebuilt, not an error
    assert index().features.shape == (40, 384) and len(logs) == 5


def test_index_search_equals_brute_force(small):
    images = torch.stack([image(1, 28, seed=i) for i in range(50)])
    split = split_of(images, "synthetic-50")
    index = neighbors.fc7_index(small, split, "unused.pt", None, None, log=lambda _: None)
    assert index.path is None  # no key: not cached
    codes = index.features[[7, 31]]
    found = index.nearest(codes, 5)
    assert found["indices"][:, 0].tolist() == [7, 31] and (found["distances"][:, 0] == 0).all()
    dist = torch.cdist(codes.double(), index.features.double())
    best = dist.sort(dim=1, stable=True)
    assert torch.equal(found["indices"], best.indices[:, :5])
    assert torch.allclose(found["distances"].double(), best.values[:, :5], atol=1e-4)
    r = neighbors.neighbors(small, index, images[12], 4)
    assert [n["index"] for n in r["neighbors"]][0] == 12 and r["neighbors"][0]["distance"] < 1e-2
    d = [n["distance"] for n in r["neighbors"]]
    assert d == sorted(d) and r["train_images"] == 50
    assert all(decode(n["image"]).size == (28, 28) for n in r["neighbors"])
    with pytest.raises(UserError, match="k must be"):
        neighbors.neighbors(small, index, images[0], 51)

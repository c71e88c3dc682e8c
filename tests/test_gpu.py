"""The CUDA paths, for a machine with a GPU (`bash benchmarks/gpu.sh` runs them): skipped
without CUDA. Each is a small real run on the GPU: bf16 and fp16 (the loss scaler)
training steps with channels_last and torch.compile, a JPEG store's loader with pinned
memory, a resume, evaluation with 10 patches, and serve's predict."""

import json

import pytest
import torch

from tiny import tiny_train_argv

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (a GPU machine: bash benchmarks/gpu.sh)"),
]


def _summary(run) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.mark.parametrize(("amp", "compile_"), [("bf16", False), ("fp16", False), ("bf16", True), ("off", False)])
def test_training_steps_on_cuda(cli, fashion_dir, tmp_path, amp, compile_):
    run = tmp_path / "run"
    extra = ["--device", "cuda", "--amp", amp, "--epochs", "1", "--out", run] + (["--compile"] if compile_ else [])
    rc, out, err = cli(*tiny_train_argv(fashion_dir, 512, 256, *extra))
    assert rc == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["amp"] == amp and config["train"]["channels_last"]
    assert _summary(run)["status"] in ("done", "finished with warnings")
    if amp == "fp16":  # the loss scaler's state is checkpointed
        ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
        assert ckpt.get("scaler"), "an fp16 run checkpoints its loss scaler"


def test_resume_on_cuda_continues_the_run(cli, fashion_dir, tmp_path):
    """Two epochs straight, and one plus a resume: the same number of steps and a loss
    within a few percent (CUDA's arithmetic is not bitwise deterministic here)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    base = tiny_train_argv(fashion_dir, 512, 256, "--device", "cuda", "--amp", "bf16")
    assert cli(*base, "--epochs", "2", "--out", straight)[0] == 0
    assert cli(*base, "--epochs", "1", "--out", resumed)[0] == 0
    rc, _, err = cli(*base, "--epochs", "2", "--out", resumed, "--resume")
    assert rc == 0, err
    a, b = (open(r / "metrics.csv").read().splitlines() for r in (straight, resumed))
    assert len(a) == len(b) == 3
    la, lb = (float(rows[-1].split(",")[3]) for rows in (a, b))
    assert abs(la - lb) < 0.05 * la


def test_the_jpeg_store_loader_pins_batches(imagenet_downloads, tmp_path):
    from alexnet.config import DataConfig
    from alexnet.data.datasets import load_split
    from alexnet.data.pack import pack

    pack(str(imagenet_downloads), str(tmp_path / "store"), workers=2, log=lambda *a: None)
    split = load_split(True, DataConfig(name=str(tmp_path / "store"), workers=2), 4)
    split.loader.set_epoch(0)
    for x, y in split.loader:
        assert x.is_pinned() and y.is_pinned()
        x.to("cuda", non_blocking=True)


def test_evaluate_ten_patches_and_predict_on_cuda(cli, fashion_dir, tmp_path, photos):
    run = tmp_path / "run"
    assert cli(*tiny_train_argv(fashion_dir, 512, 256, "--device", "cuda", "--epochs", "1", "--out", run))[0] == 0
    rc, out, err = cli("evaluate", run / "last.pt", "--device", "cuda", "--ten-crop", "--limit", "200", "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert r["images"] == 200 and 0 <= r["top1"] <= 1
    rc, out, err = cli(
        "predict", run / "last.pt", photos["astronaut.jpg"], "--device", "cuda", "--topk", "10", "--json"
    )
    assert rc == 0, err
    assert abs(sum(p["probability"] for p in json.loads(out)[0]["predictions"]) - 1) < 1e-3  # all 10 classes


def test_serve_predicts_on_cuda(cli, fashion_dir, tmp_path, photos):
    from alexnet.apps.inspection import classify_image, decode_upload
    from alexnet.core.checkpoint import load_inference

    run = tmp_path / "run"
    assert cli(*tiny_train_argv(fashion_dir, 512, 256, "--device", "cuda", "--epochs", "1", "--out", run))[0] == 0
    loaded = load_inference(run / "last.pt", torch.device("cuda"))
    image = decode_upload(photos["astronaut.jpg"].read_bytes(), 1, loaded.config.data.resize)
    for ten_crop in (False, True):
        r = classify_image(loaded, image, topk=3, ten_crop=ten_crop)
        assert len(r["predictions"]) == 3


def test_in_memory_batches_are_pinned_and_made_ahead(fashion_dir):
    from alexnet.config import DataConfig
    from alexnet.data.datasets import load_split

    split = load_split(True, DataConfig(data_dir=fashion_dir, limit_train=512), 64)
    split.loader.pin()
    plain = load_split(True, DataConfig(data_dir=fashion_dir, limit_train=512), 64)
    for (x, y), (a, b) in zip(split.loader, plain.loader, strict=True):
        assert x.is_pinned() and y.is_pinned() and torch.equal(x, a) and torch.equal(y, b)
        x.to("cuda", non_blocking=True)

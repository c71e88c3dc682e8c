"""torchrun on CPU (gloo): DDP equals one process, evaluation counts every image once,
and a run resumes with another number of processes."""

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow  # every test trains or evaluates under torchrun, in subprocesses

COMMON = [
    "--limit-train",
    "640",
    "--limit-val",
    "101",
    "--width",
    "0.25",
    "--epochs",
    "1",
    "--batch-size",
    "64",
    "--dropout",
    "0",
    "--no-augment",
    "--amp",
    "off",
    "--schedule",
    "step",
    "--workers",
    "0",
]


def alexnet(*args, procs: int = 1, timeout: int = 240) -> subprocess.CompletedProcess:
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", "-m", "alexnet"]
        if procs > 1
        else [sys.executable, "-m", "alexnet"]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes share the 2 cores
    r = subprocess.run(launcher + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fashion_dir):
    root = tmp_path_factory.mktemp("ddp")
    alexnet("train", "--data-dir", fashion_dir, *COMMON, "--out", root / "one")
    alexnet("train", "--data-dir", fashion_dir, *COMMON, "--out", root / "two", procs=2)
    return root


def test_two_processes_give_the_weights_of_one(runs):
    one = torch.load(runs / "one" / "last.pt", weights_only=True)
    two = torch.load(runs / "two" / "last.pt", weights_only=True)
    assert one["epoch"] == two["epoch"] == 1
    assert list(one["model"]) == list(two["model"])  # no "module." prefix from DDP
    for k in one["model"]:
        torch.testing.assert_close(two["model"][k], one["model"][k], atol=1e-5, rtol=0, msg=k)
    moved = sum(float((one["model"][k] - two["model"][k]).abs().max()) for k in one["model"])
    assert moved < 1e-4
    # and training did change the weights (10 steps): the comparison is not vacuous
    assert one["metrics"]["train_loss"] > 0


def test_distributed_evaluation_counts_every_image_once(runs, fashion_dir):
    ckpt = runs / "one" / "last.pt"
    single = json.loads(alexnet("evaluate", ckpt, "--data-dir", fashion_dir, "--limit", "101", "--json").stdout)
    double = json.loads(
        alexnet(
            "evaluate", ckpt, "--data-dir", fashion_dir, "--limit", "101", "--batch-size", "16", "--json", procs=2
        ).stdout
    )
    assert single["images"] == double["images"] == 101  # odd: no padding counted
    assert double["processes"] == 2
    assert double["top1"] == single["top1"] and double["top5"] == single["top5"]
    assert double["loss"] == pytest.approx(single["loss"], rel=1e-6)


def test_resume_with_another_number_of_processes(runs, fashion_dir, tmp_path):
    out = tmp_path / "resumed"
    more = [a if a != "1" else "2" for a in COMMON]  # --epochs 2
    alexnet("train", "--data-dir", fashion_dir, *more, "--out", out, "--resume", runs / "two" / "last.pt")
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2


def test_bf16_gradient_compression_is_close_to_fp32(runs, fashion_dir, tmp_path):
    alexnet("train", "--data-dir", fashion_dir, *COMMON, "--ddp-bf16", "--out", tmp_path / "bf16", procs=2)
    fp32 = torch.load(runs / "two" / "last.pt", weights_only=True)["model"]
    bf16 = torch.load(tmp_path / "bf16" / "last.pt", weights_only=True)["model"]
    a = torch.cat([fp32[k].flatten() for k in fp32])
    b = torch.cat([bf16[k].flatten() for k in fp32])
    relative = float((a - b).norm() / a.norm())
    # the hook is active (gradients were rounded to bf16), and 10 steps with 8-bit-mantissa
    # gradients stay close to the fp32 run (measured: 0.3% of the weights' norm)
    assert 0 < relative < 0.01


def test_the_mean_image_is_shared_out_and_equals_one_process(photo_folder, tmp_path):
    """Each of 2 processes sums its share of the images; the mean is the one process's, bit
    for bit (float64 sums of uint8 pixels are exact). Each run has its own copy of the
    folder, so neither finds the other's cached mean."""
    import shutil

    small = ["--model", "small", "--input-size", "64", "--epochs", "1", "--batch-size", "4", "--amp", "off"]
    means = []
    for procs in (1, 2):
        data = tmp_path / f"data-{procs}"
        shutil.copytree(photo_folder, data)
        r = alexnet("train", "--data", data, *small, "--workers", "0", "--out", tmp_path / f"run-{procs}", procs=procs)
        assert ("2 processes, a share each" in r.stdout) == (procs == 2)
        means.append(torch.load(tmp_path / f"run-{procs}" / "last.pt", weights_only=True)["mean_image"])
    assert means[0].shape == (3, 72, 72) and torch.equal(means[0], means[1])

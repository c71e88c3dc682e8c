"""The benchmark scripts run (on the CPU, tiny sizes): what benchmarks/gpu.sh calls on a GPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test starts a subprocess (the benchmark scripts, bash -n)

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu.sh")], check=True)


def test_speed_script_packed_and_decode_on_cpu():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "speed.py"),
            "packed",
            "decode",
            "--device",
            "cpu",
            "--images",
            "16",
            "--repeats",
            "1",
            "--batch",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "training from a packed store" in r.stdout and "projected 90 ImageNet epochs" in r.stdout
    assert "JPEG decoding, 16 images" in r.stdout


def test_speed_script_small_model_and_auto_precision():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "speed.py"), "small", "--device", "cpu", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--amp auto, small model, batch 96: precision" in r.stdout and "fp32 matmul peak" in r.stdout
    assert "auto (" in r.stdout and "of peak" in r.stdout


def test_agreement_script(fashion_run):
    import re

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "agreement.py"), str(fashion_run / "best.pt"), "--limit", "200"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    same = {m[0]: int(m[1]) for m in re.findall(r"^(\S+(?: compiled)?)\s+top-1 .* on (\d+) of 200$", r.stdout, re.M)}
    assert same["fp32"] == 200 and same["bf16"] >= 190 and same["bf16 compiled"] >= 190, r.stdout


def test_pipeline_script_on_a_few_images(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TMPDIR": str(tmp_path)}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "pipeline.py"), "--images", "12", "--repeats", "1"]
    r = subprocess.run(
        [*cmd, "--index", "5000", "--qualities", "90"], capture_output=True, text=True, timeout=300, env=env
    )
    assert r.returncode == 0, r.stderr[-2000:]
    for line in ("JPEG store: simplejpeg", "JPEG store: PIL", "quality 90", "5,000 entries", "projection for ImageNet"):
        assert line in r.stdout, line


def test_gpu_script_without_cuda_or_data_skips_and_says_why(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "FASHION_MNIST_DIR": str(tmp_path), "ONLY": "gpu|small|default"}
    r = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh")], capture_output=True, text=True, timeout=300, env=env
    )
    assert r.returncode == 0, r.stderr[-2000:]
    summary = r.stdout.split("=== summary")[1]
    assert "tests marked gpu" in summary and f"no Fashion-MNIST in {tmp_path}" in summary
    assert "lrn.py" in summary and "not in ONLY" in summary
    if not __import__("torch").cuda.is_available():
        assert "speed.py small" in summary and "no CUDA" in summary


def test_cli_script():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cli.py"), "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {line.split("  ")[0] for line in r.stdout.splitlines()}
    assert {"python -c pass", "alexnet --help (this checkout)", "alexnet train --help (this checkout)"} <= rows

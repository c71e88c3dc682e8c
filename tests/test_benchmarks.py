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

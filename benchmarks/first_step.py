"""Time to the first training step of `alexnet train`, with the machine's measurements cold
and cached (run/measurements.py).

    python benchmarks/first_step.py [--fashion DIR] [--runs fashion folder]

Each case runs the command three times in a subprocess, in a cache folder of its own
(ALEXNET_CACHE): `empty` (nothing cached: the kernel build, any decompression and every
measurement), `remeasure` (the same command again with --remeasure: only the measurements
redone), `cached` (again: the first run's measurements). The time counted is from the
start of the process to the run's header line "alexnet: precision ...", printed when every
decision is made, just before the first step; the process is then stopped. Cases:
`fashion`, the default run (`alexnet train --data-dir DIR --out OUT`, a 5-minute budget);
`folder`, the paper model on 24 photos in 3 classes (tests/photo_data.py), the folder
recipe (`alexnet train --data FOLDER --batch-size 4 --out OUT`). Prints seconds and the ratios to the empty run.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]

from photo_data import make_photo_folder  # noqa: E402  (tests/photo_data.py)

MARK = "alexnet: precision"


def to_first_step(argv: list[str], cache: Path) -> float:
    """Seconds from the start of `alexnet train ...` to its header's precision line."""
    env = {**os.environ, "ALEXNET_CACHE": str(cache), "PYTHONPATH": str(ROOT / "src")}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "alexnet", *argv], stdout=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        for line in proc.stdout:
            if line.startswith(MARK):
                print(f"    {line.rstrip()}")
                return time.perf_counter() - started
        raise SystemExit(f"no '{MARK}' line: exit status {proc.wait()}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--fashion", default=os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
    p.add_argument("--runs", nargs="+", default=["fashion", "folder"])
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = {
            "fashion": ["train", "--data-dir", args.fashion],
            # batch 4 (benchmarks/small_folder.py's photos24): at the recipe's 16 the timing
            # finds no batch in this folder (StopIteration, before and after the cache)
            "folder": ["train", "--data", str(make_photo_folder(tmp / "photos")), "--batch-size", "4"],
        }
        for name in args.runs:
            cache, times = tmp / f"cache-{name}", {}
            for i, (label, extra) in enumerate((("empty", []), ("remeasure", ["--remeasure"]), ("cached", []))):
                print(f"{name}, {label}:")
                times[label] = to_first_step([*cases[name], *extra, "--out", str(tmp / f"{name}-{i}")], cache)
            print(
                f"{name}: to the first step "
                + ", ".join(f"{k} {v:.1f} s ({v / times['empty']:.2f}x)" for k, v in times.items())
            )


if __name__ == "__main__":
    main()

"""The training-loss curve of the first steps, to choose health.py's not-learning thresholds.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/health.py [--steps N] [--json FILE] \
        [-- alexnet train options...]

Runs `alexnet train` in this process (the package's own CLI, with the given options on
top of --epochs 1 --amp off --device cpu --log-every 1, so that every step is a health
window) with HealthMonitor.window wrapped to record every step's loss, stops after
--steps steps, and prints the mean of each window of --window steps (the window the
training loop syncs on, log_every), how far below ln C each is, and the first step at
which the window mean fell below ln C - m for a few margins m. --json writes the per-step losses and window means.

Example (the three runs of health.py's docstring):

    python benchmarks/health.py --steps 468 --json he.json
    python benchmarks/health.py --steps 468 --json paper.json -- --init paper
    python benchmarks/health.py --steps 468 --json torch.json -- --init torch --lr 0.02
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import tempfile
import time

import torch

from alexnet.apps.cli import main
from alexnet.run.health import HealthMonitor
from alexnet.run.jsonio import write_json

MARGINS = (0.02, 0.05, 0.1, 0.2, 0.3)


class _Enough(Exception):
    """Raised from the wrapped step once enough steps are recorded: ends the run."""


def record(steps: int) -> list[float]:
    """Wrap HealthMonitor.window (the mean loss of each window of log_every steps; one
    step with --log-every 1) to record losses."""
    losses: list[float] = []
    original = HealthMonitor.window

    def recording(self, step, mean_loss):
        losses.append(mean_loss)
        if len(losses) >= steps:
            raise _Enough
        return original(self, step, mean_loss)

    HealthMonitor.window = recording
    return losses


def window_means(losses: list[float], window: int) -> list[tuple[int, float]]:
    """(global step after the window, mean loss of its steps) for each whole window."""
    return [
        ((i + 1) * window, sum(losses[i * window : (i + 1) * window]) / window) for i in range(len(losses) // window)
    ]


def first_below(means: list[tuple[int, float]], level: float) -> int | None:
    return next((step for step, m in means if m < level), None)


def main_(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=468, help="stop after this many steps (468: one epoch)")
    p.add_argument("--window", type=int, default=20, help="steps per window (the loop's log_every)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--json", help="write the losses here")
    p.add_argument("train_args", nargs="*", help="after --: more `alexnet train` options")
    args = p.parse_args(argv)
    losses = record(args.steps)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        try:
            main(
                [
                    "train",
                    "--data-dir",
                    args.data_dir,
                    "--epochs",
                    "1",
                    "--amp",
                    "off",
                    "--device",
                    "cpu",
                    "--log-every",
                    "1",
                    "--limit-val",
                    "500",
                    "--out",
                    out,
                    *args.train_args,
                ]
            )
        except _Enough:
            pass
    seconds = time.perf_counter() - started
    ln_c = math.log(args.classes)
    means = window_means(losses, args.window)
    print(f"# {' '.join(sys.argv)}")
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {len(losses)} steps in {seconds:.0f} s"
    )
    print(f"# ln C = {ln_c:.4f}")
    print("step  window-mean  ln C - mean")
    for step, m in means:
        print(f"{step:4d}  {m:11.4f}  {ln_c - m:+.4f}")
    flat = [ln_c - m for _, m in means]
    print(
        f"largest |ln C - window mean|: {max(map(abs, flat)):.4f}; smallest window mean {min(m for _, m in means):.4f}"
    )
    for margin in MARGINS:
        print(f"first window below ln C - {margin}: step {first_below(means, ln_c - margin)}")
    if args.json:
        write_json(args.json, {"argv": sys.argv, "losses": losses, "windows": means, "seconds": seconds})


if __name__ == "__main__":
    main_(sys.argv[1:])

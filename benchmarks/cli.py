"""How long `alexnet --help` and `alexnet train --help` take, against Python itself.

    PYTHONPATH=src python benchmarks/cli.py [--repeats 7] [--compare OTHER_CHECKOUT]

Each command runs as a fresh process, as a user's shell starts it (`python -m alexnet
...`, which is what the `alexnet` script runs), with this checkout's src/ first on the
path; the rounds alternate the commands, so a machine that slows down mid-run slows all
of them alike. Figures are the median wall time of --repeats rounds after one that is not
counted (it fills the file cache). The baseline, `python -c pass`, is measured in the same
run: on a shared machine the ratio to it and the time above it are the figures to compare,
not the seconds. `import torch` is timed too, as the cost the help avoids.

--compare DIR times the two commands from DIR/src as well (another checkout, such as one
from before the parser stopped importing torch), in the same rounds.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "python -c pass"
REFERENCES = {BASELINE: ["-c", "pass"], "python -c 'import torch'": ["-c", "import torch"]}
COMMANDS = {
    "alexnet --help": ["-m", "alexnet", "--help"],
    "alexnet train --help": ["-m", "alexnet", "train", "--help"],
}


def _env(src: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(src), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def _time(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def measure(trees: dict[str, Path], repeats: int) -> dict[str, list[float]]:
    """Seconds per row (the references, then each tree's commands), `repeats` rounds after
    an uncounted one."""
    first = next(iter(trees.values()))
    runs = {name: (args, _env(first)) for name, args in REFERENCES.items()}
    for tree, src in trees.items():
        runs.update({f"{name} ({tree})": (args, _env(src)) for name, args in COMMANDS.items()})
    times: dict[str, list[float]] = {row: [] for row in runs}
    for round_ in range(repeats + 1):
        for row, (args, env) in runs.items():
            t = _time(args, env)
            if round_:
                times[row].append(t)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--compare", type=Path, metavar="DIR", help="another checkout, timed from DIR/src as well")
    args = p.parse_args()
    trees = {"this checkout": ROOT / "src"}
    if args.compare:
        trees[str(args.compare)] = args.compare / "src"
    times = measure(trees, args.repeats)
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"median of {args.repeats} rounds"
    )
    base = statistics.median(times[BASELINE])
    width = max(map(len, times)) + 2
    print(f"{'command':<{width}}{'median s':>10}{'x baseline':>12}{'above baseline s':>18}")
    for row, seconds in times.items():
        t = statistics.median(seconds)
        print(f"{row:<{width}}{t:>10.3f}{t / base:>12.1f}{t - base:>18.3f}")


if __name__ == "__main__":
    main()

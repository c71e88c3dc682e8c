"""A training run's directory (--out): what `alexnet train` writes, and the one reader of
its metrics.

    config.json        every option the run was started with, and what it decided (plan)
    metrics.csv        one row per epoch (METRIC_FIELDS); blank: not measured that epoch
    last.pt, best.pt   training checkpoints (checkpoint.py), written atomically
    model.safetensors  the final weights, with the config and class names
    summary.json       how the run ended: done, finished with warnings, stopped, diverged
    unreadable.txt     training files that could not be read (skipped)
    tensorboard/       the same scalars and conv1's kernels, if tensorboard is installed

Only the main process of a torchrun job writes; the others hold a RunDir that does nothing.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING

from ..run.errors import UserError
from ..run.jsonio import write_json
from ..run.tblog import TensorBoard
from .checkpoint import save_checkpoint

if TYPE_CHECKING:
    from torch import nn

METRIC_FIELDS = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_top1",
    "val_top5",
    "epoch_seconds",
    "train_images_per_s",
    "health",
)
TEXT_FIELDS = ("health",)  # the others are numbers
# what every metrics.csv has had (files of older versions lack step and health)
REQUIRED_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_top1")


def _append(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in METRIC_FIELDS})  # blank: not validated


def read_metrics(run_dir: str | Path) -> list[dict]:
    """RUN_DIR/metrics.csv as one dict per epoch: numbers as floats (blank: NaN), health as
    text. A UserError names the file for a missing, empty or malformed one."""
    path = Path(run_dir) / "metrics.csv"
    if not Path(run_dir).is_dir():
        raise UserError(f"{path}: no such file ({run_dir} is not a directory)")
    if not path.is_file():
        raise UserError(f"{path}: no such file (a run directory from `alexnet train` has one after its first epoch)")
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED_FIELDS if c not in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: not a readable CSV file ({e})") from e
    if not rows:
        raise UserError(f"{path}: empty, no epochs recorded yet")
    if missing:
        raise UserError(f"{path}: no column {', '.join(missing)} (not a metrics.csv from `alexnet train`?)")
    return [_parse_row(path, line, row) for line, row in enumerate(rows, start=2)]


def _parse_row(path: Path, line: int, row: dict) -> dict:
    parsed = {}
    for name in METRIC_FIELDS:
        text = (row.get(name) or "").strip()
        if name in TEXT_FIELDS:
            parsed[name] = text
            continue
        try:
            parsed[name] = float(text) if text else math.nan
        except ValueError as e:
            raise UserError(f"{path}: line {line}: {name} is {text!r}, not a number") from e
    return parsed


class RunDir:
    """The files of one run directory; `main` False (a torchrun worker): writes nothing."""

    def __init__(self, out: str | Path, main: bool = True) -> None:
        self.out, self.main = Path(out), main
        self.last, self.best = self.out / "last.pt", self.out / "best.pt"
        self.weights, self.metrics = self.out / "model.safetensors", self.out / "metrics.csv"
        self.board: TensorBoard | None = None

    def start(self, config: dict, done_epochs: int) -> None:
        """config.json (atomically); metrics.csv keeps only the rows of the epochs the run
        resumes after (a kill between a row and its checkpoint would repeat the epoch), and a
        fresh run starts a new one; temporary files of writes a kill interrupted are removed."""
        if not self.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self.write_config(config)
        for stale in self.out.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        rows = []
        if done_epochs and self.metrics.is_file():
            with open(self.metrics, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= done_epochs]
        self.metrics.unlink(missing_ok=True)
        for row in rows:
            _append(self.metrics, row)
        self.board = TensorBoard(self.out)

    def write_config(self, config: dict) -> None:
        if self.main:
            write_json(self.out / "config.json", config)

    def end_epoch(self, row: dict, model: nn.Module) -> None:
        """The epoch's metrics row, to metrics.csv and TensorBoard."""
        if self.main:
            _append(self.metrics, row)
            self.board.epoch(row, model)

    def save(self, state: dict, best: bool = False) -> None:
        """A training checkpoint as last.pt (and best.pt), atomically. best.pt first: last.pt
        is where a resumed run continues, so a kill between the two writes repeats the epoch
        (and rewrites best.pt) rather than leave its best weights unsaved for good."""
        if self.main:
            if best:
                save_checkpoint(self.best, state)
            save_checkpoint(self.last, state)

    def write_summary(self, summary: dict) -> None:
        if self.main:
            write_json(self.out / "summary.json", summary)

    def write_unreadable(self, files: list[str]) -> Path | None:
        path = self.out / "unreadable.txt"
        if self.main and files:
            path.write_text("\n".join(files) + "\n")
            return path
        return None

    def close(self) -> None:
        if self.board is not None:
            self.board.close()

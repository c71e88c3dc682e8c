"""A training run's directory (--out): what `alexnet train` writes, and the one reader of
its metrics.

    config.json        every option the run was started with, and what it decided (plan)
    metrics.csv        one row per epoch (METRIC_FIELDS); blank: not measured that epoch
    last.pt, best.pt   training checkpoints (checkpoint.py)
    model.safetensors  the final weights, with the config and class names
    summary.json       how the run ended: done, finished with warnings, stopped, diverged
    unreadable.txt     training files that could not be read (skipped)
    tensorboard/       the same scalars and conv1's kernels, if tensorboard is installed

Every file but metrics.csv and tensorboard/ is written whole and atomically
(jsonio.atomic_write). metrics.csv is appended to, one row in one write (fsynced); an append
that fails is cut back to the file's previous length, so it never ends in half a row. A
write that finds no room (a full disk, `ulimit -f`, a quota) stops the run with DiskFull:
one line naming the file and the free space of its folder; the files written before are
left as they were and the temporary file is removed. A start removes the temporary files
(`.NAME.<random>.tmp`) that a killed write left. Only the main process of a torchrun job
writes; the others hold a RunDir that does nothing.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..run.errors import DiskFull, UserError, full_errno
from ..run.jsonio import atomic_write, write_json
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


def _csv(rows: list[dict], header: bool) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS)
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in METRIC_FIELDS})  # blank: not validated
    return buf.getvalue().encode()


def _append(path: Path, row: dict) -> None:
    """One row (and the header, for a new file) in one write, fsynced; a failed append is cut
    back to the file's previous length: metrics.csv never ends in half a row."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        data = memoryview(_csv([row], header=size == 0))
        try:
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        except OSError as e:
            os.ftruncate(fd, size)
            code = full_errno(e)
            if code is None:
                raise
            raise DiskFull(path, code, "its earlier rows are kept whole" if size else "nothing was written") from e
    finally:
        os.close(fd)


def _kept_rows(path: Path, done_epochs: int) -> list[dict]:
    """The whole rows of metrics.csv of epochs up to `done_epochs`: a row cut short (by a
    crash in an older version) or of a later epoch is dropped."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        r
        for r in rows
        if None not in r.values() and (r.get("epoch") or "").isdigit() and int(r["epoch"]) <= done_epochs
    ]


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
        """config.json; metrics.csv keeps only the rows of the epochs the run resumes after (a
        kill between a row and its checkpoint would repeat the epoch; rewritten atomically),
        and a fresh run starts a new one; temporary files of writes a kill interrupted are
        removed (a paper-size one is 456 MB)."""
        if not self.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in self.out.glob(".*.tmp"):  # atomic_write's `.NAME.<random>.tmp`: only this run writes here
            stale.unlink(missing_ok=True)
        self.write_config(config)
        rows = _kept_rows(self.metrics, done_epochs) if done_epochs and self.metrics.is_file() else []
        if rows:
            atomic_write(self.metrics, lambda tmp: Path(tmp).write_bytes(_csv(rows, header=True)))
        else:
            self.metrics.unlink(missing_ok=True)
        self.board = TensorBoard(self.out)

    def write_config(self, config: dict) -> None:
        if self.main:
            write_json(self.out / "config.json", config)

    def end_epoch(self, row: dict, model: nn.Module) -> None:
        """The epoch's metrics row, to metrics.csv and TensorBoard."""
        if self.main:
            try:
                _append(self.metrics, row)
            except DiskFull as e:
                raise e.keeping(f"{e.kept}; {self._resume()}") from e
            self.board.epoch(row, model)

    def save(self, state: dict, best: bool = False) -> None:
        """A training checkpoint as last.pt (and best.pt), atomically. best.pt first: last.pt
        is where a resumed run continues, so a kill between the two writes repeats the epoch
        (and rewrites best.pt) rather than leave its best weights unsaved for good. Without
        room, DiskFull says which checkpoint the run can be resumed from."""
        if not self.main:
            return
        for path in (self.best, self.last) if best else (self.last,):
            try:
                save_checkpoint(path, state)
            except DiskFull as e:
                raise e.keeping(self._resume()) from e

    def _resume(self) -> str:
        """What a run stopped by a full disk leaves to resume from."""
        if not self.last.is_file():
            return "no checkpoint was written"
        return f"{self.last} is the last checkpoint, unchanged (continue with --resume {self.last} once there is room)"

    def write_summary(self, summary: dict) -> None:
        if self.main:
            write_json(self.out / "summary.json", summary)

    def write_unreadable(self, files: list[str]) -> Path | None:
        path = self.out / "unreadable.txt"
        if self.main and files:
            text = "\n".join(files) + "\n"
            atomic_write(path, lambda tmp: Path(tmp).write_text(text))
            return path
        return None

    def close(self) -> None:
        if self.board is not None:
            self.board.close()

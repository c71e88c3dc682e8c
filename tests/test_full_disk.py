"""A write that finds no room (a full disk: ENOSPC; the file size limit, `ulimit -f`: EFBIG)
loses nothing: the previous file stays as it was and loadable, the run stops with one line
naming the file and the free space of its folder, and no temporary file is left behind.
Caches (the mean image, the fc7 index, the LRN kernel) warn in one line and go on.

Two faults, both real to the code under test:
- ENOSPC: `open` (or os.write) in the module under test is replaced by one whose writes
  fail with OSError(ENOSPC) once a byte budget is spent (the bytes up to it are written);
- EFBIG: RLIMIT_FSIZE (what `ulimit -f` sets) with SIGXFSZ ignored, so that the kernel
  refuses a write past the limit, whatever writes it (Python, torch's C++, safetensors'
  Rust, a compiler). In this process for the fast tests (the soft limit only, put back
  after), and for a real `alexnet train` subprocess (preexec_fn) in the slow one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alexnet.config import RunConfig
from alexnet.core.checkpoint import load_checkpoint, save_checkpoint, save_weights
from alexnet.core.model import AlexNet
from alexnet.core.recipes import resolve
from alexnet.core.rundir import RunDir, _append, read_metrics
from alexnet.run.errors import DiskFull, full_errno
from alexnet.run.jsonio import temporary_files, write_json
from tiny import tiny_train_argv

# ----------------------------------------------------------------------------- the faults


@contextlib.contextmanager
def file_size_limit(limit: int):
    """Writes past `limit` bytes of any file fail with EFBIG in this process (and in the
    processes it starts) until the block ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


class _Disk:
    """A disk with `room` bytes left: writes through filling_open spend them, and the write
    that would pass them writes what fits, then fails with ENOSPC (as a real one does)."""

    def __init__(self, room: int) -> None:
        self.room = room

    def take(self, n: int) -> int:
        fits = min(n, self.room)
        self.room -= fits
        return fits


class _FillingFile:
    def __init__(self, f, disk: _Disk) -> None:
        self._f, self._disk = f, disk

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        fits = self._disk.take(len(data))
        self._f.write(data[:fits])
        if fits < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fits

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def filling_open(monkeypatch, module, room: int) -> None:
    """`open` in `module` gives files that write into a disk with `room` bytes left."""
    disk = _Disk(room)
    real = open

    def fake(file, mode="r", *args, **kwargs):
        f = real(file, mode, *args, **kwargs)
        return _FillingFile(f, disk) if any(c in mode for c in "wax+") else f

    monkeypatch.setattr(module, "open", fake, raising=False)


def filling_os_write(monkeypatch, room: int) -> None:
    """os.write writes what fits in `room` bytes, then fails with ENOSPC."""
    disk, real = _Disk(room), os.write

    def fake(fd, data):
        fits = disk.take(len(data))
        if not fits and len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, bytes(data[:fits]))

    monkeypatch.setattr(os, "write", fake)


def assert_no_room_line(e: DiskFull, path: Path) -> str:
    """The error names the file and the free space of its folder, in one line."""
    line = str(e)
    assert "\n" not in line and line.startswith(f"{path}: not written: ")
    assert f"free in {path.absolute().parent}" in line
    assert e.code in (errno.ENOSPC, errno.EFBIG)
    return line


def no_temporary_files(folder: Path) -> None:
    assert not [p.name for p in Path(folder).rglob("*.tmp")]


# ----------------------------------------------------------------------------- small files to write


@pytest.fixture(scope="module")
def state(fashion_dir, tmp_path_factory) -> dict:
    """A training checkpoint's state for a quarter-width model (untrained)."""
    out = tmp_path_factory.mktemp("state")
    cfg = resolve("fashion-mnist", {"name": None, "width": 0.25}, {"data_dir": fashion_dir}, {"out": str(out)})
    torch.manual_seed(0)
    return {
        "config": cfg.to_dict(),
        "model": AlexNet(cfg.model).state_dict(),
        "epoch": 1,
        "classes": list("0123456789"),
    }


def _weights(state: dict, path: Path, seed: int) -> None:
    cfg = RunConfig.from_dict(state["config"])
    torch.manual_seed(seed)
    save_weights(path, AlexNet(cfg.model), cfg, state["classes"])


def _writers(state: dict) -> dict:
    """name -> (file name, write(path, version)): each writer the package rewrites whole."""

    def checkpoint(path, version):
        save_checkpoint(path, {**state, "epoch": version})

    def unreadable(path, version):
        RunDir(path.parent).write_unreadable([f"bad-{version}-{i}.jpg: cannot decode" for i in range(500)])

    def summary(path, version):
        RunDir(path.parent).write_summary({"status": "done", "epochs_done": version, "loss": [0.5] * 500})

    return {
        "last.pt": checkpoint,
        "model.safetensors": lambda path, version: _weights(state, path, version),
        "config.json": lambda path, version: write_json(path, {"version": version, "lr": [0.01] * 500}),
        "summary.json": summary,
        "unreadable.txt": unreadable,
    }


# ----------------------------------------------------------------------------- fast: each writer


def test_full_errno_reads_the_errno_through_wrapped_errors():
    full = OSError(errno.ENOSPC, "No space left on device")
    wrapped = RuntimeError("[enforce fail at inline_container.cc] file write failed")
    wrapped.__context__ = full  # what torch.save into a Python file raises
    from safetensors import SafetensorError

    assert full_errno(full) == errno.ENOSPC and full_errno(wrapped) == errno.ENOSPC
    assert full_errno(SafetensorError("I/O error: File too large (os error 27)")) == errno.EFBIG
    assert full_errno(OSError(errno.EACCES, "Permission denied")) is None
    assert full_errno(RuntimeError("file write failed")) is None


@pytest.mark.parametrize("name", ["last.pt", "model.safetensors", "config.json", "summary.json", "unreadable.txt"])
def test_a_write_past_the_file_size_limit_keeps_the_previous_file(state, tmp_path, name):
    write = _writers(state)[name]
    path = tmp_path / name
    write(path, 1)
    before = path.read_bytes()
    with file_size_limit(len(before) // 2), pytest.raises(DiskFull) as e:
        write(path, 2)
    line = assert_no_room_line(e.value, path)
    assert "File too large" in line and "the previous file is unchanged" in line
    assert path.read_bytes() == before
    no_temporary_files(tmp_path)
    if name == "last.pt":
        assert torch.load(path, weights_only=True)["epoch"] == 1
    if name == "model.safetensors":
        assert load_file(str(path)).keys() == state["model"].keys()


@pytest.mark.parametrize("room", [0, 1000, 100_000])
def test_a_checkpoint_that_finds_the_disk_full_keeps_the_previous_one(state, tmp_path, monkeypatch, room):
    import alexnet.core.checkpoint as checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint(path, state)
    before = path.read_bytes()
    assert room < len(before)  # the new one does not fit
    filling_open(monkeypatch, checkpoint, room)
    with pytest.raises(DiskFull) as e:
        save_checkpoint(path, {**state, "epoch": 2})
    assert "No space left on device" in assert_no_room_line(e.value, path)
    assert path.read_bytes() == before and load_checkpoint(path)["epoch"] == 1
    no_temporary_files(tmp_path)


@pytest.mark.parametrize("fault", ["ENOSPC", "EFBIG"])
def test_a_metrics_row_that_finds_no_room_leaves_no_half_row(tmp_path, monkeypatch, fault):
    path = tmp_path / "metrics.csv"
    _append(path, {"epoch": 1, "step": 10, "lr": 0.01, "train_loss": 2.0, "train_acc": 0.3})
    before = path.read_bytes()
    row = {"epoch": 2, "step": 20, "lr": 0.01, "train_loss": 1.5, "train_acc": 0.5, "health": "ok"}
    with contextlib.ExitStack() as stack:
        if fault == "ENOSPC":
            filling_os_write(monkeypatch, 7)  # part of the row is written, then the disk is full
        else:
            stack.enter_context(file_size_limit(len(before) + 7))
        with pytest.raises(DiskFull) as e:
            _append(path, row)
    monkeypatch.undo()
    assert "earlier rows are kept whole" in assert_no_room_line(e.value, path)
    assert path.read_bytes() == before
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1]
    _append(path, row)  # with room again, the next append is a whole row
    rows = read_metrics(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["train_loss"] == 1.5 and rows[1]["health"] == "ok"


def test_a_resume_keeps_the_whole_rows_of_metrics_csv(state, tmp_path):
    rundir = RunDir(tmp_path)
    for epoch in (1, 2, 3):
        _append(rundir.metrics, {"epoch": epoch, "lr": 0.01, "train_loss": 1.0 / epoch})
    whole = rundir.metrics.read_bytes()
    with open(rundir.metrics, "ab") as f:  # a row cut short (a crash in an older version)
        f.write(b"4,40,0.01,0.")
    rundir.start(state["config"], done_epochs=4)
    rundir.close()
    assert rundir.metrics.read_bytes() == whole
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2, 3]


def test_a_run_stopped_by_a_full_disk_says_where_to_resume(state, tmp_path):
    rundir = RunDir(tmp_path)
    rundir.save(state, best=True)
    before = rundir.last.read_bytes()
    with file_size_limit(len(before) // 2), pytest.raises(DiskFull) as e:
        rundir.save({**state, "epoch": 2}, best=True)
    line = assert_no_room_line(e.value, rundir.best)  # best.pt is written first, then last.pt
    assert f"continue with --resume {rundir.last}" in line
    assert rundir.last.read_bytes() == before == rundir.best.read_bytes()
    no_temporary_files(tmp_path)


def test_a_start_removes_the_temporary_files_a_killed_save_left(state, tmp_path):
    rundir = RunDir(tmp_path)
    rundir.save(state)
    good = rundir.last.read_bytes()
    stale = tmp_path / ".last.pt.k1ll3d.tmp"  # a save SIGKILLed half-way (atomic_write's name)
    stale.write_bytes(good[: len(good) // 2])
    (tmp_path / ".metrics.csv.k1ll3d.tmp").write_bytes(b"epoch,st")
    assert temporary_files(rundir.last) == [stale]
    rundir.start(state["config"], done_epochs=1)
    rundir.close()
    no_temporary_files(tmp_path)
    assert load_checkpoint(rundir.last)["epoch"] == 1


def test_caches_that_find_no_room_warn_in_one_line_and_go_on(tmp_path):
    from alexnet.apps.neighbors import _write_index
    from alexnet.data.stats import _write_cache

    paths = [tmp_path / "data" / ".alexnet-mean-32.safetensors", tmp_path / "run" / "mean-32.safetensors"]
    logged = []
    with file_size_limit(1000):
        _write_cache(paths, torch.rand(3, 32, 32), "fp", logged.append)
        written = _write_index(paths, {"features": torch.rand(100, 64)}, {"format": "x"}, logged.append)
    assert written is None and len(logged) == 2
    for line in logged:
        assert line.startswith("alexnet: warning: ") and "\n" not in line
        assert all(str(p) in line for p in paths) and "File too large" in line and "free in" in line
    assert not any(p.exists() for p in paths)
    no_temporary_files(tmp_path)


def test_tensorboard_that_finds_no_room_warns_once_and_stops_writing(tmp_path):
    from alexnet.run.tblog import TensorBoard

    pytest.importorskip("tensorboard")
    logged = []
    board = TensorBoard(tmp_path, log=logged.append)
    model = AlexNet(RunConfig().model)
    with file_size_limit(200):  # conv1's kernels as an image are larger
        for epoch in (1, 2):
            board.epoch({"epoch": epoch, "train_loss": 1.0}, model)
    board.close()
    assert board.writer is None and len(logged) == 1
    assert logged[0].startswith(f"alexnet: warning: {tmp_path / 'tensorboard'}: not written any more (File too large")


def test_a_copied_run_that_finds_no_room_is_not_left_half_copied(tmp_path):
    from alexnet.apps.experiments import _copy_run

    source, target = tmp_path / "a" / "run", tmp_path / "b" / "run"
    source.mkdir(parents=True)
    (source / "metrics.csv").write_text("epoch\n1\n")
    (source / "last.pt").write_bytes(os.urandom(20_000))
    target.parent.mkdir()
    with file_size_limit(10_000), pytest.raises(DiskFull) as e:
        _copy_run(source, target)
    assert_no_room_line(e.value, target)
    assert sorted(p.name for p in target.parent.iterdir()) == []  # no half copy, no .partial


def test_the_cli_says_it_in_one_line_with_exit_status_2(fashion_dir, tmp_path, cli, one_line_error):
    out = tmp_path / "samples"
    assert cli("samples", "--data-dir", fashion_dir, "--count", "1", "--out", tmp_path / "first")[0] == 0
    with file_size_limit(200):  # a 28 x 28 PNG is larger
        rc, _, err = cli("samples", "--data-dir", fashion_dir, "--count", "3", "--out", out)
    line = one_line_error(rc, err, out / "00000_Ankle_boot.png", "free in", "File too large")
    assert "Traceback" not in line
    assert not list(out.iterdir())


def test_a_pack_that_fills_the_disk_continues_to_the_same_store(imagenet, tmp_path, monkeypatch):
    import alexnet.data.pack as pack_module

    quiet = {"encoding": "raw", "workers": 0, "log": lambda *a: None}
    reference = tmp_path / "reference"
    pack_module.pack(str(imagenet), str(reference), **quiet)
    train_bytes = sum(p.stat().st_size for p in reference.glob("train-*.u8"))
    monkeypatch.setattr(pack_module, "CHECKPOINT_IMAGES", 1)  # a progress record per batch
    out = tmp_path / "store"
    partial = tmp_path / "store.partial"
    filling_open(monkeypatch, pack_module, train_bytes + 100_000)  # train fits; val's first shard does not
    with pytest.raises(DiskFull) as e:
        pack_module.pack(str(imagenet), str(out), **quiet)
    assert e.value.path.parent == partial and e.value.path.name.startswith("val-")  # the file being written
    line = assert_no_room_line(e.value, e.value.path)
    assert f"{partial} keeps" in line and "run the same command again" in line
    assert not out.exists()
    assert not list(partial.glob("val-*"))  # cut back to the last record: what val wrote is freed
    monkeypatch.undo()
    pack_module.pack(str(imagenet), str(out), **quiet)  # the same command, with room
    assert _tree(out) == _tree(reference)


def _tree(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "pack.json"}


# ----------------------------------------------------------------------------- slow: a real run


def _limited(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return preexec


@pytest.mark.slow
def test_training_under_ulimit_f_stops_in_one_line_and_resumes(fashion_dir, tmp_path, cli):
    """`alexnet train --resume` in a subprocess whose files may not pass half of last.pt's
    size: epoch 2's checkpoint fails with EFBIG. Exit 2, one line naming the checkpoint and
    the free space and where to resume; last.pt is epoch 1's, byte for byte; no temporary file. Then a stale
    temporary file as a SIGKILLed save leaves one, and a resume with room: it is removed,
    and the run finishes with a good checkpoint and one metrics row per epoch."""
    out = tmp_path / "run"
    argv = tiny_train_argv(fashion_dir, 600, 100, "--out", out)
    rc, _, err = cli(*argv, "--epochs", "1")
    assert rc == 0, err
    last = out / "last.pt"
    before = last.read_bytes()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "alexnet", *map(str, argv), "--epochs", "2", "--resume", str(last)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, preexec_fn=_limited(len(before) // 2))
    assert "Traceback" not in r.stderr and r.returncode == 2, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("alexnet: error:")]
    assert len(errors) == 1, r.stderr[-3000:]
    # best.pt is written before last.pt: epoch 2 (better, or not) fails at the first of them
    assert errors[0].startswith(
        (
            f"alexnet: error: {out / 'best.pt'}: not written: File too large",
            f"alexnet: error: {last}: not written: File too large",
        )
    )
    assert f"free in {out.absolute()}" in errors[0] and f"--resume {last}" in errors[0]
    assert last.read_bytes() == before
    assert torch.load(last, weights_only=True)["epoch"] == 1
    no_temporary_files(out)
    assert [r["epoch"] for r in read_metrics(out)][0] == 1  # (epoch 2's row may be there: resume drops it)

    killed = out / ".last.pt.k1ll3d.tmp"
    killed.write_bytes(before[: len(before) // 2])
    rc, _, err = cli(*argv, "--epochs", "2", "--resume", last)
    assert rc == 0, err
    assert not killed.exists()
    no_temporary_files(out)
    assert load_checkpoint(last)["epoch"] == 2
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]


@pytest.mark.slow
def test_a_kernel_build_that_finds_no_room_leaves_nothing(tmp_path, monkeypatch):
    """The compiler (a subprocess: the limit holds there too) cannot write the library:
    _compile returns the compiler's line, and no temporary file stays; a stale one that a
    killed build left is removed by the next build of the key."""
    from alexnet.run import native

    if native._compiler() is None:
        pytest.skip("no C compiler")
    target = tmp_path / "lrn-0123456789abcdef.so"
    stale = tmp_path / f".{target.name}.k1ll3d.tmp"
    stale.write_bytes(b"\0" * 100)
    old = native.STALE_BUILD_S + 60
    os.utime(stale, (stale.stat().st_atime - old, stale.stat().st_mtime - old))
    with file_size_limit(1000):
        error = native._compile(native._compiler(), native.FLAG_SETS[-1], None, target)
    assert error and "\n" not in error
    assert not target.exists() and not list(tmp_path.iterdir())
    assert native._compile(native._compiler(), native.FLAG_SETS[-1], None, target) is None
    assert [p.name for p in tmp_path.iterdir()] == [target.name]

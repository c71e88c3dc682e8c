"""A training process killed at any moment (SIGKILL: no handler runs, nothing is flushed)
leaves a loadable checkpoint behind, and a resumed run finishes the job.

`alexnet train` runs in a subprocess on a slice of Fashion-MNIST and is killed at four
points chosen with seeded random delays: during the second epoch of a fresh run, during
the start-up of a resumed run, just after a resumed run replaced last.pt, and while a
resumed run is writing last.pt (its temp file is on disk). After every kill OUT/last.pt
must load with load_checkpoint (never half-written: atomic_write renames a complete,
fsynced temp file over it) and must not have gone back in epochs; leftover temp files
(.last.pt.<random>.tmp) are never named last.pt and are not loadable checkpoints unless
complete. A last `--resume OUT/last.pt` run completes all 6 epochs.
"""

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alexnet.checkpoint import load_checkpoint, model_from_checkpoint
from alexnet.config import RunConfig
from alexnet.errors import UserError

EPOCHS = 6
TEMP_NAME = re.compile(r"^\.(last|best)\.pt\.[^/]+\.tmp$|^\.model\.safetensors\.[^/]+\.tmp$")


def _env():
    # one math thread: on a shared 2-core machine two OpenMP threads that lose their core
    # to another process spin-wait, and training runs tens of times slower
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_stray_runs():
    """A failed assertion must not leave a training run behind: kill the ones we started."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _start(fashion_dir, out: Path, log: Path, resume: bool) -> subprocess.Popen:
    argv = [sys.executable, "-m", "alexnet", "train", "--data-dir", fashion_dir,
            "--limit-train", "2000", "--limit-val", "200", "--width", "0.25",
            "--epochs", str(EPOCHS), "--amp", "off", "--schedule", "step", "--out", str(out)]
    if resume:
        argv += ["--resume", str(out / "last.pt")]
    with open(log, "ab") as f:
        _STARTED.append(subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=_env()))
    return _STARTED[-1]


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 60.0, poll: float = 0.0005) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before the kill point"
        assert time.monotonic() < deadline, "timed out waiting for the kill point"
        time.sleep(poll)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the run finished before it could be killed"


def _inode(path: Path):
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _check_after_kill(out: Path, previous_epoch: int) -> int:
    """last.pt loads and rebuilds its model; temp files are never taken for it."""
    ckpt = load_checkpoint(out / "last.pt")
    model_from_checkpoint(ckpt, out / "last.pt")
    epoch = ckpt["epoch"]
    assert 1 <= epoch <= EPOCHS and epoch >= previous_epoch, (epoch, previous_epoch)
    if (out / "best.pt").exists():
        load_checkpoint(out / "best.pt")
    for f in out.iterdir():
        if f.name.endswith(".tmp"):
            assert TEMP_NAME.match(f.name), f.name  # hidden, random infix: never "last.pt"
            if ".pt." in f.name:  # killed mid-write: refused; between fsync and rename: complete
                try:
                    load_checkpoint(f)
                except UserError as e:
                    assert str(f) in str(e) and "\n" not in str(e)
    return epoch


def test_sigkill_at_random_moments_leaves_a_loadable_checkpoint(fashion_dir, tmp_path):
    rng = random.Random(20240611)
    out, log = tmp_path / "run", tmp_path / "train.log"
    last = out / "last.pt"
    report = []

    # 1. a fresh run, in its second epoch: after last.pt first appears, a random delay
    proc = _start(fashion_dir, out, log, resume=False)
    _wait_for(last.exists, proc)
    time.sleep(rng.uniform(0.0, 0.25))
    _kill(proc)
    epoch = _check_after_kill(out, 1)
    report.append(("fresh run, epoch 2", epoch))

    # 2. a resumed run during start-up (imports, data, loading the checkpoint)
    before = last.read_bytes()
    proc = _start(fashion_dir, out, log, resume=True)
    time.sleep(rng.uniform(0.1, 1.5))
    _kill(proc)
    assert last.read_bytes() == before  # nothing written yet
    epoch = _check_after_kill(out, epoch)
    report.append(("resume, start-up", epoch))

    # 3. a resumed run just after it replaced last.pt (best.pt and metrics come next)
    inode = _inode(last)
    proc = _start(fashion_dir, out, log, resume=True)
    _wait_for(lambda: _inode(last) != inode, proc)
    time.sleep(rng.uniform(0.0, 0.02))
    _kill(proc)
    epoch = _check_after_kill(out, epoch + 1)
    report.append(("resume, just after a save", epoch))

    # 4. a resumed run while its temp file for last.pt is on disk (killed mid-write),
    # or at the latest just after the rename
    inode, old_temps = _inode(last), set(out.glob(".last.pt.*.tmp"))
    proc = _start(fashion_dir, out, log, resume=True)
    _wait_for(lambda: set(out.glob(".last.pt.*.tmp")) - old_temps or _inode(last) != inode, proc)
    _kill(proc)
    epoch = _check_after_kill(out, epoch)
    report.append(("resume, writing last.pt", epoch))
    assert epoch < EPOCHS  # the last run below has work left

    # the last run resumes and completes
    proc = _start(fashion_dir, out, log, resume=True)
    assert proc.wait(timeout=120) == 0, log.read_text()[-2000:]
    final = load_checkpoint(last)
    assert final["epoch"] == EPOCHS
    weights = load_checkpoint(out / "model.safetensors")
    assert RunConfig.from_dict(weights["config"]) == RunConfig.from_dict(final["config"])
    temps = sorted(f.name for f in out.iterdir() if f.name.endswith(".tmp"))
    print("\nkill points (where, last.pt epoch after the kill):", report, "leftover temp files:", temps)


def test_kill_during_atomic_write_keeps_the_old_file(fashion_run, tmp_path):
    """Deterministic version of kill point 4: a writer stopped half-way through the temp
    file by SIGKILL. last.pt keeps its old bytes; the half-written temp file stays behind
    under its own name and is refused as a checkpoint."""
    out = tmp_path / "run"
    out.mkdir()
    good = (fashion_run / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(good)
    marker = tmp_path / "half-written"
    script = f"""
import time
from pathlib import Path
from alexnet.checkpoint import atomic_write
data = Path({str(fashion_run / 'last.pt')!r}).read_bytes()
def slow(tmp):
    with open(tmp, "wb") as f:
        f.write(data[:len(data) // 2])
        f.flush()
        Path({str(marker)!r}).touch()
        time.sleep(60)
        f.write(data[len(data) // 2:])
atomic_write(Path({str(out / 'last.pt')!r}), slow)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], env=_env())
    _STARTED.append(proc)
    _wait_for(marker.exists, proc, poll=0.01)
    _kill(proc)
    assert (out / "last.pt").read_bytes() == good
    assert load_checkpoint(out / "last.pt")["epoch"] == torch.load(fashion_run / "last.pt",
                                                                   weights_only=True)["epoch"]
    [temp] = [f for f in out.iterdir() if f.name != "last.pt"]
    assert TEMP_NAME.match(temp.name) and temp.stat().st_size == len(good) // 2
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(temp)
